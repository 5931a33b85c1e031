//! One signature through each backend: keybound's `Signer::sign` against the backend library's
//! own call (the floor). A benchmark, not a test: `cargo bench --bench sign` (`scripts/perf.py`
//! runs it for docs/PERFORMANCE.md).

use keybound_signer::config::TpmKey;
use keybound_signer::{Algorithm, Signer};
use keybound_signer_pkcs11::testing::TestToken;
use keybound_signer_soft::SoftSigner;
use keybound_signer_tpm::testing::Swtpm;

const MESSAGE: &[u8] =
    b"eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJkZXYua2V5Ym91bmQudGVzdCIsInN1YiI6Ik";

#[path = "common.rs"]
mod common;
use common::{Stats, time_pair};

fn row(name: &str, floor: Stats, ours: Stats) {
    println!(
        "{name:<24} {:>9.1}µs {:>9.1}µs {:>9.1}µs {:>9.1}µs {:>7.3}",
        floor.p50.as_secs_f64() * 1e6,
        floor.p99.as_secs_f64() * 1e6,
        ours.p50.as_secs_f64() * 1e6,
        ours.p99.as_secs_f64() * 1e6,
        ours.p50.as_secs_f64() / floor.p50.as_secs_f64()
    );
    common::record(
        "sign",
        name,
        floor
            .fields("floor")
            .into_iter()
            .chain(ours.fields("keybound")),
    );
}

fn main() {
    let quick = common::quick();
    let runs = if quick { 10 } else { 5000 };
    println!(
        "one signature over a JWS signing input ({} bytes), {runs} runs",
        MESSAGE.len()
    );
    println!(
        "{:<24} {:>11} {:>11} {:>11} {:>11} {:>7}",
        "backend", "floor p50", "floor p99", "keybound p50", "p99", "ratio"
    );

    // Software keys: the floor is the RustCrypto call itself.
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let soft_ed =
        SoftSigner::from_pem(&pkcs8(&ed), keybound_signer_soft::Source::Generated).expect("key");
    let (floor, ours) = time_pair(
        runs,
        || {
            std::hint::black_box(ed25519_dalek::Signer::sign(&ed, MESSAGE));
        },
        || {
            std::hint::black_box(soft_ed.sign(MESSAGE).expect("sign"));
        },
    );
    row("file ed25519", floor, ours);
    let p = p256::ecdsa::SigningKey::from_slice(&[7; 32]).expect("key");
    let soft_p = SoftSigner::from_pem(
        p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&p256::SecretKey::from(&p), Default::default())
            .expect("pem")
            .as_bytes(),
        keybound_signer_soft::Source::Generated,
    )
    .expect("key");
    let (floor, ours) = time_pair(
        runs,
        || {
            std::hint::black_box::<p256::ecdsa::Signature>(p256::ecdsa::signature::Signer::sign(
                &p, MESSAGE,
            ));
        },
        || {
            std::hint::black_box(soft_p.sign(MESSAGE).expect("sign"));
        },
    );
    row("file ecdsa-p256", floor, ours);

    // SoftHSM: the floor is C_Sign through cryptoki on the same key (in keybound's harness).
    for (name, algorithm) in [
        ("softhsm ed25519", Algorithm::Ed25519),
        ("softhsm ecdsa-p256", Algorithm::EcdsaP256Sha256),
    ] {
        let token = TestToken::new("bench");
        let signer =
            keybound_signer_pkcs11::generate(&token.config("k"), algorithm, false).expect("key");
        let (floor, ours) = time_pair(
            runs,
            || {
                std::hint::black_box(token.raw_sign("k", algorithm, MESSAGE));
            },
            || {
                std::hint::black_box(signer.sign(MESSAGE).expect("sign"));
            },
        );
        row(name, floor, ours);
    }

    // swtpm: the floor is TPM2_Sign through tss-esapi on the same persistent key.
    let tpm = Swtpm::start();
    let config = tpm.config(TpmKey::Handle(0x8100_0100));
    let signer = keybound_signer_tpm::generate(&config, Algorithm::EcdsaP256Sha256, false)
        .expect("key")
        .signer;
    let runs = runs / 5;
    let mut raw = tpm.raw_signer(0x8100_0100);
    let (floor, ours) = time_pair(
        runs,
        || {
            std::hint::black_box(raw.sign(MESSAGE));
        },
        || {
            std::hint::black_box(signer.sign(MESSAGE).expect("sign"));
        },
    );
    row("swtpm ecdsa-p256", floor, ours);
}

fn pkcs8(key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    key.to_pkcs8_pem(Default::default())
        .expect("pem")
        .as_bytes()
        .to_vec()
}
