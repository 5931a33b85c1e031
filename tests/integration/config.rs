//! tbot's v2 configs load unchanged; mistakes are named by file, line and key.

use std::path::PathBuf;
use std::time::Duration;

use keybound::config::{ClusterAddr, Config, Destination, HostPort, OutputConfig, Symlinks};
use keybound_signer::config::{EnvConfig, FileConfig, SignerConfig};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn parse_err(yaml: &str) -> String {
    Config::parse(yaml, "tbot.yaml").unwrap_err().to_string()
}

const HEAD: &str = "version: v2\nproxy_server: example.teleport.sh:443\nonboarding:\n  join_method: bound_keypair\n  token: example-token\n";

#[test]
fn the_seed_guide_configs_load_unchanged() {
    let env = Config::load(&data("seed-env.yaml")).unwrap();
    assert_eq!(
        env.cluster,
        Some(ClusterAddr::Proxy(
            HostPort::parse("example.teleport.sh:443", 0).unwrap()
        ))
    );
    assert_eq!(env.onboarding.token, "example-token");
    assert_eq!(
        env.onboarding.signer_config(),
        Ok(SignerConfig::Env(EnvConfig::default()))
    );
    assert_eq!(
        env.storage,
        Destination::Directory {
            path: "/var/lib/teleport/bot".into(),
            symlinks: Symlinks::TrySecure
        }
    );
    assert!(env.outputs.is_empty());
    assert_eq!(env.credential_ttl, Duration::from_secs(3600));
    assert_eq!(env.renewal_interval, Duration::from_secs(1200));
    assert!(!env.oneshot);

    let file = Config::load(&data("seed-file.yaml")).unwrap();
    assert_eq!(
        file.onboarding.signer_config(),
        Ok(SignerConfig::File(FileConfig::new("/path/to/key")))
    );
}

#[test]
fn every_supported_key_is_read() {
    let config = Config::load(&data("full.yaml")).unwrap();
    assert_eq!(config.storage, Destination::Memory);
    assert_eq!(config.credential_ttl, Duration::from_secs(7200));
    assert_eq!(config.renewal_interval, Duration::from_secs(1800));
    assert!(config.oneshot && config.debug && !config.insecure);
    assert_eq!(config.diag_addr.as_deref(), Some("127.0.0.1:3001"));
    assert_eq!(
        config.onboarding.ca_path,
        Some(PathBuf::from("/etc/keybound/ca.pem"))
    );
    let identity = |i: usize| match &config.outputs[i] {
        OutputConfig::Identity(o) => o,
        other => panic!("not an identity output: {other:?}"),
    };
    assert_eq!(config.outputs.len(), 2);
    assert!(identity(0).ssh_config);
    assert!(!identity(1).ssh_config);
    assert_eq!(identity(1).name.as_deref(), Some("second"));
    assert_eq!(
        identity(1).destination,
        Destination::Directory {
            path: "/opt/machine-id-2".into(),
            symlinks: Symlinks::Secure
        }
    );
}

#[test]
fn typos_and_wrong_types_name_file_line_and_key() {
    let cases = [
        (
            "version: v2\nonboarding:\n  join_method: bound_keypair\n  tokn: x\n",
            "config tbot.yaml:4:3: onboarding: unknown field `tokn`, expected",
        ),
        (
            "version: v2\nproxy_servr: x:443\n",
            "config tbot.yaml:2:1: unknown field `proxy_servr`",
        ),
        (
            &format!("{HEAD}oneshot: maybe\n"),
            "config tbot.yaml:6:10: oneshot: invalid type: string \"maybe\", expected a boolean",
        ),
        (
            &format!("{HEAD}credential_ttl: forever\nrenewal_interval: 1m\n"),
            "config tbot.yaml:6:17: credential_ttl: \"forever\" is not a duration",
        ),
        (
            &format!(
                "{HEAD}services:\n  - type: identity\n    destination:\n      type: directory\n      pth: /x\n"
            ),
            "config tbot.yaml:10:7: services[0].destination: unknown field `pth`",
        ),
        (
            &format!("{HEAD}storage:\n  type: bucket\n"),
            "config tbot.yaml:7:9: storage.type: unknown destination type \"bucket\"",
        ),
        (
            "version: v3\n",
            "config tbot.yaml:1:10: version: unknown config version \"v3\"",
        ),
        (
            "version: v2\nonboarding:\n  join_method: token\n  token: t\n",
            "config tbot.yaml:3:16: onboarding.join_method: join method \"token\" is not supported by keybound",
        ),
        (
            "- just\n- a list\n",
            "config tbot.yaml:1:1: invalid type: sequence",
        ),
    ];
    for (yaml, expected) in cases {
        let error = parse_err(yaml);
        assert!(
            error.starts_with(expected),
            "expected {expected:?}\n got {error:?}"
        );
        assert!(!error.contains('\n'), "one line: {error}");
    }
}

#[test]
fn tbot_features_keybound_lacks_are_refused_by_name() {
    let cases = [
        (
            format!("{HEAD}fips: true\n"),
            "config tbot.yaml:6:7: fips: FIPS mode is not supported by keybound yet",
        ),
        (
            format!("{HEAD}  ca_pins: [sha256:abc]\n"),
            "config tbot.yaml:6:12: onboarding.ca_pins: CA pins are not supported by keybound yet",
        ),
        (
            format!("{HEAD}  bound_keypair:\n    registration_secret: s3cret\n"),
            "config tbot.yaml:7:26: onboarding.bound_keypair.registration_secret: registration secrets are not supported",
        ),
        (
            format!("{HEAD}services:\n  - type: application-tunnel\n"),
            "config tbot.yaml:7:11: services[0].type: tbot service type \"application-tunnel\" is not supported by keybound yet",
        ),
        (
            format!("{HEAD}services:\n  - type: identity\n    cluster: leaf\n"),
            "config tbot.yaml:8:14: services[0].cluster: routing an output to another cluster is not supported by keybound yet",
        ),
        (
            format!("{HEAD}storage:\n  type: kubernetes_secret\n"),
            "config tbot.yaml:7:9: storage.type: destination type \"kubernetes_secret\" is not supported by keybound yet",
        ),
        (
            format!("{HEAD}storage:\n  type: directory\n  path: /x\n  acls: required\n"),
            "config tbot.yaml:9:9: storage.acls: POSIX ACLs on destinations are not supported by keybound yet",
        ),
    ];
    for (yaml, expected) in cases {
        let error = parse_err(&yaml);
        assert!(
            error.starts_with(expected),
            "expected {expected:?}\n got {error:?}"
        );
    }
    // Their "off" values are fine.
    let off = format!(
        "{HEAD}fips: false\nservices:\n  - type: identity\n    roles: []\n    allow_reissue: false\n    destination:\n      type: memory\n"
    );
    Config::parse(&off, "tbot.yaml").unwrap();
}

#[test]
fn checks_across_keys() {
    let cases = [
        ("version: v2\n", "config tbot.yaml: onboarding: missing"),
        (
            "version: v2\nonboarding:\n  join_method: bound_keypair\n",
            "config tbot.yaml: onboarding.token: missing",
        ),
        (
            "version: v2\nonboarding:\n  token: t\n",
            "config tbot.yaml: onboarding.join_method: missing",
        ),
        (
            &format!("{HEAD}auth_server: a:3025\n"),
            "config tbot.yaml: proxy_server and auth_server are both set",
        ),
        (
            &format!("{HEAD}insecure: true\n  \n")
                .replace("insecure: true\n", "insecure: true\n")
                .replace(HEAD, &format!("{HEAD}  ca_path: /ca.pem\n")),
            "config tbot.yaml: insecure and onboarding.ca_path are both set",
        ),
        (
            &format!("{HEAD}credential_ttl: 1h\n"),
            "config tbot.yaml: credential_ttl and renewal_interval must both be specified if either is",
        ),
        (
            &format!("{HEAD}storage:\n  type: directory\n"),
            "config tbot.yaml: storage.path: missing",
        ),
        ("", "config tbot.yaml: is empty"),
    ];
    for (yaml, expected) in cases {
        let error = parse_err(yaml);
        assert!(
            error.starts_with(expected),
            "expected {expected:?}\n got {error:?}"
        );
    }
    let old_name = Config::parse(
        &format!("{HEAD}certificate_ttl: 2h\nrenewal_interval: 1h\n"),
        "tbot.yaml",
    )
    .unwrap();
    assert_eq!(old_name.credential_ttl, Duration::from_secs(7200));
    let auth = Config::parse(
        &HEAD.replace(
            "proxy_server: example.teleport.sh:443",
            "auth_server: auth.example.com",
        ),
        "x",
    )
    .unwrap();
    assert_eq!(
        auth.cluster,
        Some(ClusterAddr::Auth(
            HostPort::parse("auth.example.com:3025", 0).unwrap()
        ))
    );
}

/// The configuration keeps the path (what messages may show); the join reads the file.
#[test]
fn a_token_given_as_an_absolute_path_is_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-file-token\n").unwrap();
    let path = token_file.display().to_string();
    let yaml = HEAD.replace("token: example-token", &format!("token: {path}"));
    let token = Config::parse(&yaml, "x").unwrap().onboarding.token;
    assert_eq!(token, path);
    assert_eq!(
        keybound::config::token::read(&token).unwrap(),
        "from-file-token"
    );
    let missing = HEAD.replace("token: example-token", "token: /no/such/token");
    assert!(
        parse_err(&missing).contains("onboarding.token: cannot read the token file /no/such/token"),
        "{}",
        parse_err(&missing)
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let error = Config::load(std::path::Path::new("/no/such/tbot.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("config /no/such/tbot.yaml: cannot read: No such file"),
        "{error}"
    );
}

/// docs/config.md documents exactly the keys the loader knows: every key of its YAML structs
/// (`keybound::config::keys()`) appears in the first column of a `key` table, and no key there
/// is unknown to the loader. A list's items are written `services[].name` on the page.
#[test]
fn docs_config_md_lists_every_key() {
    let page =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
            .unwrap();
    let mut documented = std::collections::BTreeSet::new();
    let mut in_key_table = false;
    for line in page.lines() {
        let Some(row) = line.strip_prefix('|') else {
            in_key_table = false;
            continue;
        };
        let first = row.split('|').next().unwrap_or_default().trim();
        if first == "key" {
            in_key_table = true;
            continue;
        }
        if !in_key_table {
            continue;
        }
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                documented.insert(part.replace("[]", ""));
            }
        }
    }
    let known: std::collections::BTreeSet<String> = keybound::config::keys().into_iter().collect();
    assert!(known.len() > 50, "the loader's keys: {known:?}");
    let missing: Vec<_> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/config.md: {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "docs/config.md names keys the loader does not know: {unknown:?}"
    );
}

/// Every error text docs/troubleshooting.md is keyed by (its `### `...`` headings) occurs in
/// keybound's source, so the page cannot go on describing a message that was reworded.
#[test]
fn troubleshooting_md_quotes_real_messages() {
    fn sources(dir: &std::path::Path, text: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, text);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut source = String::new();
    for dir in ["src", "devcluster/src", "teleport/src"] {
        sources(&root.join(dir), &mut source);
    }
    for backend in ["core", "soft", "pkcs11", "tpm"] {
        sources(
            &root.join("backends").join(backend).join("src"),
            &mut source,
        );
    }
    // Join Rust's string continuations (`\` at the end of a line) and unescape quotes.
    let mut joined = String::with_capacity(source.len());
    let mut lines = source.split('\n').peekable();
    while let Some(line) = lines.next() {
        match line.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                if let Some(next) = lines.peek_mut() {
                    *next = next.trim_start();
                }
            }
            None => {
                joined.push_str(line);
                joined.push('\n');
            }
        }
    }
    let source = joined.replace("\\\"", "\"");

    let page = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
    let quoted: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("### `")?.strip_suffix('`'))
        .collect();
    assert!(quoted.len() >= 40, "{quoted:?}");
    let missing: Vec<&&str> = quoted.iter().filter(|q| !source.contains(**q)).collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md quotes messages found nowhere in the source: {missing:?}"
    );
}
