//! The NV record store on swtpm, checked with tpm2-tools: the index as defined
//! (`tpm2_nvreadpublic`), its bytes (`tpm2_nvread` with the authorization value), a wrong value
//! refused without touching the lockout counter, torn writes simulated with `tpm2_nvwrite`, an
//! index someone else defined, an owner with a password, and a power loss.

use std::path::Path;

use keybound_signer::config::{TpmConfig, TpmKey};
use keybound_signer::{ErrorKind, PinSource};
use keybound_signer_tpm::nv::{HEADER, NvStore};
use keybound_signer_tpm::testing::{Swtpm, run_ok};
use zeroize::Zeroizing;

const INDEX: u32 = 0x0180_0100;
const AUTH: &str = "0123456789abcdef0123456789abcdef";

fn config(tpm: &Swtpm, auth: &str) -> TpmConfig {
    let mut config = tpm.config(TpmKey::Handle(0x8100_0001));
    config.auth = Some(PinSource::Value(Zeroizing::new(auth.to_owned())));
    config
}

/// The index's bytes, read by tpm2_nvread with the authorization value.
fn nvread(tpm: &Swtpm, dir: &Path) -> Vec<u8> {
    let out = dir.join("nv.bin");
    run_ok(
        tpm.tool("tpm2_nvread")
            .arg(format!("0x{INDEX:08x}"))
            .args(["-C", &format!("0x{INDEX:08x}"), "-P", AUTH, "-o"])
            .arg(&out),
    );
    std::fs::read(out).unwrap()
}

/// Writes `bytes` at `offset` with tpm2_nvwrite (a torn write, as keybound would never make it).
fn nvwrite(tpm: &Swtpm, dir: &Path, offset: usize, bytes: &[u8]) {
    let file = dir.join("garbage.bin");
    std::fs::write(&file, bytes).unwrap();
    run_ok(
        tpm.tool("tpm2_nvwrite")
            .arg(format!("0x{INDEX:08x}"))
            .args(["-C", &format!("0x{INDEX:08x}"), "-P", AUTH])
            .args(["--offset", &offset.to_string(), "-i"])
            .arg(&file),
    );
}

fn lockout_counter(tpm: &Swtpm) -> String {
    let out = run_ok(tpm.tool("tpm2_getcap").arg("properties-variable"));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find(|l| l.contains("TPM2_PT_LOCKOUT_COUNTER"))
        .unwrap_or_else(|| panic!("no lockout counter in {text}"))
        .to_owned()
}

#[test]
fn the_index_is_defined_protected_and_read_by_tpm2_tools() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    assert!(
        NvStore::open(&config(&tpm, AUTH), INDEX).unwrap().is_none(),
        "not defined yet"
    );
    let mut store = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap();
    assert_eq!(store.info().size, 2048);
    assert_eq!(store.info().capacity(), 1024 - HEADER);
    assert_eq!(store.read().unwrap(), None, "never written");

    let public = run_ok(tpm.tool("tpm2_nvreadpublic").arg(format!("0x{INDEX:08x}")));
    let public = String::from_utf8(public.stdout).unwrap();
    assert!(
        public.contains("friendly: authwrite|authread|no_da\n"),
        "{public}"
    );
    assert!(public.contains("size: 2048"), "{public}");

    // A record of more than one chunk (512 B): slot 0, then slot 1.
    let first: Vec<u8> = (0..700u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(store.write(&first).unwrap(), 1);
    assert_eq!(store.write(b"second").unwrap(), 2);
    assert_eq!(store.write(b"second").unwrap(), 2, "unchanged: not written");
    let bytes = nvread(&tpm, dir.path());
    assert_eq!(bytes.len(), 2048);
    assert_eq!(&bytes[..4], b"KBN1");
    assert_eq!(&bytes[4..12], &1u64.to_be_bytes());
    assert_eq!(&bytes[HEADER..HEADER + 700], &first[..]);
    assert_eq!(&bytes[1024..1028], b"KBN1");
    assert_eq!(&bytes[1024 + 4..1024 + 12], &2u64.to_be_bytes());
    assert_eq!(&bytes[1024 + HEADER..1024 + HEADER + 6], b"second");

    // A new process (a new context) reads the newest.
    drop(store);
    let mut again = NvStore::open(&config(&tpm, AUTH), INDEX).unwrap().unwrap();
    let record = again.read().unwrap().unwrap();
    assert_eq!((record.seq, record.payload.as_slice()), (2, &b"second"[..]));

    // A wrong value: tpm2_nvread is refused, and so is keybound, once; neither counts towards
    // the lockout (noDA).
    let before = lockout_counter(&tpm);
    let refused = tpm
        .tool("tpm2_nvread")
        .arg(format!("0x{INDEX:08x}"))
        .args(["-C", &format!("0x{INDEX:08x}"), "-P", "wrong"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let mut wrong = NvStore::open(&config(&tpm, "wrong-value"), INDEX)
        .unwrap()
        .unwrap();
    let e = wrong.read().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    let text = e.to_string();
    assert!(
        text.contains("the TPM refused the authorization value of NV index 0x01800100"),
        "{text}"
    );
    assert!(!text.contains("wrong-value"), "{text}");
    let e = NvStore::open(&config(&tpm, "wrong-value"), INDEX).unwrap_err();
    assert!(e.to_string().contains("already refused"), "{e}");
    assert_eq!(lockout_counter(&tpm), before);
}

#[test]
fn a_torn_write_leaves_the_other_slot_readable() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let mut store = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap();
    store.write(b"one").unwrap();
    store.write(b"two").unwrap();

    // The newest slot (1) torn: its first chunk replaced by garbage. The record is "one".
    nvwrite(&tpm, dir.path(), 1024, &[0x5a; 512]);
    let record = store.read().unwrap().unwrap();
    assert_eq!((record.seq, record.payload.as_slice()), (1, &b"one"[..]));
    // The next write repairs slot 1, after slot 0's record.
    assert_eq!(store.write(b"three").unwrap(), 2);
    let bytes = nvread(&tpm, dir.path());
    assert_eq!(&bytes[1024 + HEADER..1024 + HEADER + 5], b"three");

    // Only the payload of the newest torn (the header intact): its hash fails; "one" again.
    nvwrite(&tpm, dir.path(), 1024 + HEADER, b"XXXXX");
    assert_eq!(store.read().unwrap().unwrap().payload, b"one");

    // The older slot torn instead: the newest stays.
    store.write(b"four").unwrap();
    nvwrite(&tpm, dir.path(), 0, &[0u8; 64]);
    assert_eq!(store.read().unwrap().unwrap().payload, b"four");

    // Both torn: a clear error, and a write makes a valid record again.
    nvwrite(&tpm, dir.path(), 1024, &[0u8; 64]);
    let e = store.read().unwrap_err();
    assert!(
        e.to_string()
            .contains("holds no valid record (both slots fail their hash)"),
        "{e}"
    );
    store.write(b"five").unwrap();
    assert_eq!(store.read().unwrap().unwrap().payload, b"five");
}

#[test]
fn the_record_survives_a_power_loss() {
    let mut tpm = Swtpm::start();
    let mut store = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap();
    store.write(b"before the crash").unwrap();
    drop(store);
    tpm.kill();
    tpm.restart();
    let mut store = NvStore::open(&config(&tpm, AUTH), INDEX).unwrap().unwrap();
    assert_eq!(store.read().unwrap().unwrap().payload, b"before the crash");
}

#[test]
fn too_big_a_record_is_refused_before_anything_is_written() {
    let tpm = Swtpm::start();
    let mut store = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 512).unwrap();
    assert_eq!(store.info().size, 512);
    store.write(b"kept").unwrap();
    let e = store.write(&[1u8; 256]).unwrap_err();
    assert!(
        e.to_string()
            .contains("the record (256 bytes) does not fit a slot of NV index 0x01800100 (256 bytes each, 208 for the record)"),
        "{e}"
    );
    assert_eq!(store.read().unwrap().unwrap().payload, b"kept");
}

#[test]
fn an_index_defined_otherwise_is_refused() {
    let tpm = Swtpm::start();
    // DA-protected, and readable with the owner's (empty) authorization.
    run_ok(
        tpm.tool("tpm2_nvdefine")
            .arg(format!("0x{INDEX:08x}"))
            .args([
                "-C",
                "o",
                "-s",
                "2048",
                "-a",
                "authread|authwrite|ownerread",
                "-p",
                AUTH,
            ]),
    );
    let e = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string().contains(
            "NV index 0x01800100 (2048 bytes, authwrite|ownerread|authread) can also be read or written without its \
             authorization value"
        ),
        "{e}"
    );
    run_ok(
        tpm.tool("tpm2_nvundefine")
            .arg(format!("0x{INDEX:08x}"))
            .args(["-C", "o"]),
    );
    run_ok(
        tpm.tool("tpm2_nvdefine")
            .arg(format!("0x{INDEX:08x}"))
            .args([
                "-C",
                "o",
                "-s",
                "2048",
                "-a",
                "authread|authwrite",
                "-p",
                AUTH,
            ]),
    );
    let e = NvStore::open(&config(&tpm, AUTH), INDEX).unwrap_err();
    assert!(e.to_string().contains("is not no_da"), "{e}");
    // Outside the owner range: refused before the TPM is asked.
    let e = NvStore::open_or_define(&config(&tpm, AUTH), 0x0100_0000, 2048).unwrap_err();
    assert!(
        e.to_string().contains("is not an owner-range NV index"),
        "{e}"
    );
}

#[test]
fn an_owner_with_a_password_defines_the_index_as_the_error_says() {
    let tpm = Swtpm::start();
    run_ok(tpm.tool("tpm2_changeauth").args(["-c", "o", "ownerpw"]));
    let e = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(
        e.to_string().contains(
            "tpm2_nvdefine 0x01800100 -C o -P <owner auth> -s 2048 -a 'authread|authwrite|no_da'"
        ),
        "{e}"
    );
    run_ok(
        tpm.tool("tpm2_nvdefine")
            .arg(format!("0x{INDEX:08x}"))
            .args([
                "-C",
                "o",
                "-P",
                "ownerpw",
                "-s",
                "2048",
                "-a",
                "authread|authwrite|no_da",
                "-p",
                AUTH,
            ]),
    );
    let mut store = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap();
    store.write(b"ok").unwrap();
    assert_eq!(store.read().unwrap().unwrap().seq, 1);
}

#[test]
fn writes_alternate_and_a_torn_newest_falls_back_one() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let mut store = NvStore::open_or_define(&config(&tpm, AUTH), INDEX, 2048).unwrap();
    for (i, payload) in [b"r1", b"r2", b"r3", b"r4", b"r5"].iter().enumerate() {
        assert_eq!(store.write(*payload).unwrap(), i as u64 + 1);
        // Each write lands in the slot the previous one did not use.
        let bytes = nvread(&tpm, dir.path());
        let at = (i % 2) * 1024;
        assert_eq!(&bytes[at + 4..at + 12], &(i as u64 + 1).to_be_bytes());
        assert_eq!(&bytes[at + HEADER..at + HEADER + 2], *payload);
    }
    // r5 is in slot 0; torn, r4 (slot 1) is the record.
    nvwrite(&tpm, dir.path(), 0, &[0xa5; 100]);
    let record = store.read().unwrap().unwrap();
    assert_eq!((record.seq, record.payload.as_slice()), (4, &b"r4"[..]));
}
