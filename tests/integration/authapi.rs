//! The authenticated connection to Auth and the Auth API rules an identity output meets, with
//! keybound's client against the dev cluster: who may ask for which certificates, and what an
//! impersonated identity may not do.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keybound::auth::{AuthClient, AuthRoute, encoded_cluster_name};
use keybound::config::HostPort;
use keybound::identity::Identity;
use keybound::join::{self, JoinParams};
use keybound::subject_key::SubjectKey;
use keybound_proto::proto::{PingRequest, UserCertsRequest, auth_service_client};
use keybound_proto::teleport::trust::v1 as trust;
use keybound_signer::{Algorithm, Signer as _};
use keybound_signer_soft::SoftSigner;
use keybound_teleport::suite::Suite;
use tonic::Code;

use crate::cluster::{ca_file, cluster_for, params};

/// A fresh key and a request for `roles` with it, as an output makes one.
fn request(username: &str, roles: &[&str], ttl: Duration) -> (SubjectKey, UserCertsRequest) {
    let key = SubjectKey::generate(Suite::BalancedV1).unwrap();
    let request = UserCertsRequest {
        username: username.to_owned(),
        expires: Some(prost_types::Timestamp::from(SystemTime::now() + ttl)),
        route_to_cluster: "dev.keybound.test".to_owned(),
        role_requests: roles.iter().map(|r| r.to_string()).collect(),
        use_role_requests: true,
        ssh_public_key: format!("{}\n", key.ssh_authorized).into_bytes(),
        tls_public_key: key.public_pem.clone().into_bytes(),
        reissuable_role_impersonation: false,
        ..UserCertsRequest::default()
    };
    (key, request)
}

fn denied(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, text: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(text), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_api_follows_teleports_rules() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let signer: Arc<dyn keybound_signer::Signer> = Arc::new(signer);
    let joined = join::join(&params(&cluster, &ca, "t", signer.clone()))
        .await
        .unwrap();
    let bot = &joined.identity;
    let route = AuthRoute::Proxy(HostPort::parse(&cluster.proxy_addr(), 443).unwrap());
    let auth = AuthClient::connect(&route, bot).await.unwrap();

    let ping = auth.ping().await.unwrap();
    assert_eq!(ping.cluster_name, "dev.keybound.test");
    assert_eq!(ping.signature_algorithm_suite, Suite::BalancedV1.number());

    // A bot reads its own role, not others.
    let role = auth.get_role("bot-robot").await.unwrap();
    let impersonate = role.spec.unwrap().allow.unwrap().impersonate.unwrap();
    assert_eq!(impersonate.roles, ["access"]);
    denied(
        auth.get_role("access").await,
        Code::PermissionDenied,
        r#"access denied to perform action "read" on "role""#,
    );

    // CAs, never their keys.
    let hosts = auth.cert_authorities("host").await.unwrap();
    assert_eq!(hosts.len(), 1);
    let spec = hosts[0].spec.as_ref().unwrap();
    assert_eq!(spec.r#type, "host");
    assert_eq!(
        spec.active_keys.as_ref().unwrap().tls[0].cert,
        cluster.ca_pem().into_bytes()
    );
    let mut trust_client = trust::trust_service_client::TrustServiceClient::new(auth.channel());
    denied(
        trust_client
            .get_cert_authorities(trust::GetCertAuthoritiesRequest {
                r#type: "user".into(),
                include_key: true,
            })
            .await,
        Code::PermissionDenied,
        "cert_authority",
    );

    // GenerateUserCerts: only for itself, not expired, at least one role.
    let hour = Duration::from_secs(3600);
    denied(
        auth.generate_user_certs(request("bot-other", &["access"], hour).1)
            .await,
        Code::PermissionDenied,
        "access denied: impersonation is not allowed",
    );
    let (_, mut past) = request("bot-robot", &["access"], hour);
    past.expires = Some(prost_types::Timestamp::from(
        SystemTime::now() - Duration::from_secs(60),
    ));
    denied(
        auth.generate_user_certs(past).await,
        Code::PermissionDenied,
        "access denied: client credentials have expired, please relogin.",
    );
    denied(
        auth.generate_user_certs(request("bot-robot", &[], hour).1)
            .await,
        Code::InvalidArgument,
        "at least one role request is required",
    );

    // Granted, capped at 24 hours, and not allowed to reissue.
    let (key, long) = request("bot-robot", &["access"], Duration::from_secs(48 * 3600));
    let certs = auth.generate_user_certs(long).await.unwrap();
    let host_pems =
        keybound_teleport::pem::split_pem_certs(&auth.cluster_ca_cert().await.unwrap()).unwrap();
    let output = Identity::from_user_certs(
        key.private_pem,
        key.ssh_authorized,
        &key.spki_der,
        &certs,
        host_pems,
        bot.ssh_host_ca_keys.clone(),
    )
    .unwrap();
    let cap = SystemTime::now() + Duration::from_secs(24 * 3600 + 5);
    assert!(output.info.not_after <= cap, "{:?}", output.info.not_after);
    let as_output = AuthClient::connect(&route, &output).await.unwrap();
    denied(
        as_output
            .generate_user_certs(request("bot-robot", &["access"], hour).1)
            .await,
        Code::PermissionDenied,
        "access denied: identity is not allowed to reissue certificates",
    );

    // With allow_reissue, the output may reissue, but not request other roles.
    let (key, mut reissuable) = request("bot-robot", &["access"], hour);
    reissuable.reissuable_role_impersonation = true;
    let certs = auth.generate_user_certs(reissuable).await.unwrap();
    let output = Identity::from_user_certs(
        key.private_pem,
        key.ssh_authorized,
        &key.spki_der,
        &certs,
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let mut with_host = output.clone();
    with_host.host_ca_pems = vec![cluster.ca_pem()];
    let as_output = AuthClient::connect(&route, &with_host).await.unwrap();
    denied(
        as_output
            .generate_user_certs(request("bot-robot", &["access"], hour).1)
            .await,
        Code::PermissionDenied,
        "access denied: impersonated roles can not request other roles",
    );
    let (_, mut plain) = request("bot-robot", &[], hour);
    plain.use_role_requests = false;
    let reissued = as_output.generate_user_certs(plain).await.unwrap();
    assert!(!reissued.tls.is_empty());

    // An output's certificate names the bot but is not its identity: a join presenting it is
    // unauthenticated (a recovery, with a new instance), never a rejoin of the bot's instance.
    let rejoined = join::rejoin(&params(&cluster, &ca, "t", signer), &as_output)
        .await
        .unwrap();
    assert_ne!(
        rejoined.identity.info.bot_instance_id,
        bot.info.bot_instance_id
    );
    assert_eq!(cluster.cluster.bot_instances("robot"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_wants_a_certificate_and_the_route_wants_this_cluster() {
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let proxy = HostPort::parse(&cluster.proxy_addr(), 443).unwrap();

    // TLS to Auth through the proxy without a client certificate: the connection is made (a
    // join needs none), every Auth RPC is refused.
    let connect = |alpn_cluster: &str| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cluster.cluster.ca().host_ca_der()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let encoded = encoded_cluster_name(alpn_cluster);
        tls.alpn_protocols = vec![
            format!("teleport-auth@{encoded}").into_bytes(),
            b"h2".to_vec(),
        ];
        let proxy = proxy.clone();
        async move {
            keybound::transport::connect_with(
                &proxy,
                Arc::new(tls),
                keybound::transport::Dial {
                    server_name: Some(
                        rustls::pki_types::ServerName::try_from("teleport.cluster.local").unwrap(),
                    ),
                    accept: &[b"h2"],
                    expected: "h2",
                    proxy: true,
                },
            )
            .await
        }
    };
    let channel = connect("dev.keybound.test").await.unwrap();
    let mut client = auth_service_client::AuthServiceClient::new(channel);
    denied(
        client.ping(PingRequest {}).await,
        Code::PermissionDenied,
        "access denied",
    );
    // The route names another cluster, whose Auth the proxy cannot reach.
    assert!(connect("elsewhere.example").await.is_err());
}

/// A join and an authenticated rejoin both send `BoundKeypairInit` right behind `ClientInit`,
/// without waiting for the suite: against a cluster that holds `ServerInit` back until that
/// message arrives, both go through (a join that waited for the suite would wait until its
/// timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_rejoins_send_their_keys_without_waiting_for_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SoftSigner::generate(Algorithm::Ed25519).unwrap();
    let cluster = cluster_for(signer.public_key(), |_| {}).await;
    let ca = ca_file(&cluster, dir.path());
    let signer: Arc<dyn keybound_signer::Signer> = Arc::new(signer);
    let p = params(&cluster, &ca, "t", signer);
    cluster
        .cluster
        .set_misbehaviour(Some(keybound_devcluster::Misbehaviour::HoldServerInit));

    // A bound on the wait, not a speed claim: waiting for ServerInit would reach it.
    let bounded = JoinParams {
        timeout: Duration::from_secs(20),
        ..p.clone()
    };
    let bot = join::join(&bounded).await.unwrap().identity;
    assert!(bot.ssh_public_key.starts_with("ecdsa-sha2-nistp256 "));

    let route = AuthRoute::Proxy(HostPort::parse(&cluster.proxy_addr(), 443).unwrap());
    let auth = AuthClient::connect(&route, &bot).await.unwrap();
    let rejoined = join::rejoin(&bounded, &auth).await.unwrap();
    assert!(rejoined.authenticated);
    assert_eq!(
        rejoined.identity.info.bot_instance_id,
        bot.info.bot_instance_id
    );
    assert_eq!(cluster.cluster.bot_instances("robot"), 1);
}

/// Locks as Auth applies them when it issues certificates (`generateUserCert`): one on a role
/// refuses certificates carrying it, and nothing else; one on the bot's user refuses its join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_on_a_role_or_a_user_refuse_certificates_for_them() {
    use keybound_devcluster::locks::{Lock, LockTarget};
    let lock = |name: &str, target| Lock {
        name: name.to_owned(),
        target,
        message: "under review".to_owned(),
        expires: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let signer: Arc<dyn keybound_signer::Signer> =
        Arc::new(SoftSigner::generate(Algorithm::Ed25519).unwrap());
    let cluster = cluster_for(signer.public_key(), |c| {
        c.locks = vec![lock("r", LockTarget::Role("access".into()))];
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    let joined = join::join(&params(&cluster, &ca, "t", signer.clone()))
        .await
        .unwrap();
    let route = AuthRoute::Proxy(HostPort::parse(&cluster.proxy_addr(), 443).unwrap());
    let auth = AuthClient::connect(&route, &joined.identity).await.unwrap();
    denied(
        auth.generate_user_certs(request("bot-robot", &["access"], Duration::from_secs(3600)).1)
            .await,
        Code::PermissionDenied,
        r#"lock targeting Role:"access" is in force: under review"#,
    );
    auth.get_role("bot-robot").await.unwrap();

    let cluster = cluster_for(signer.public_key(), |c| {
        c.locks = vec![lock("u", LockTarget::User("bot-robot".into()))];
    })
    .await;
    let ca = ca_file(&cluster, dir.path());
    let error = join::join(&params(&cluster, &ca, "t", signer))
        .await
        .expect_err("a locked bot cannot join");
    assert!(
        format!("{error:#}")
            .contains(r#"lock targeting User:"bot-robot" is in force: under review"#),
        "{error:#}"
    );
}
