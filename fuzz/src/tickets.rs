//! Session tickets as a GPU server checks them: arbitrary tokens against the control plane's public key, and
//! tokens properly signed with that key around arbitrary claims (what a stolen or buggy signer could produce).
//!
//! Asserts: an unsigned or wrongly signed token is never accepted; a signed ticket is accepted only when its
//! claims are plausible (`vgpu_control::ticket::check_claims`): finite shares in (0, 1], no GPU listed twice, a
//! bounded GPU count, memory limits whose sum fits, a known priority class.

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use vgpu_control::signing::{KeyRing, KeySource};
use vgpu_control::store::{Db, MemStore};
use vgpu_control::ticket::{TicketClaims, TicketGpu, TicketVerifier, MAX_TICKET_GPUS, TICKET_TYP};

/// The control plane's key ring with one in-memory Ed25519 key (made once per process: only the signature bytes
/// depend on it, the claims come from the input, so a saved input reproduces), and a verifier of its public key.
fn keys() -> &'static (KeyRing, TicketVerifier) {
    static KEYS: OnceLock<(KeyRing, TicketVerifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ring = KeyRing::open(KeySource::Memory, &Db::new(Box::new(MemStore::default())))
            .unwrap_or_else(|e| panic!("key ring: {e}"));
        let verifier =
            TicketVerifier::new(ring.active_public_pem().as_bytes()).unwrap_or_else(|e| panic!("public key: {e}"));
        (ring, verifier)
    })
}

#[derive(Debug, Arbitrary)]
struct Gpu {
    server: u8,
    gpu: u8,
    memory_limit_mib: u64,
    compute_share: f64,
    priority: u8,
    share_cap: bool,
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// Any token text.
    Token(String),
    /// Claims built from fields, signed.
    Claims { typ_ok: bool, exp_in: i32, gpus: Vec<Gpu> },
    /// A JSON document signed as claims (missing, extra or mistyped fields).
    Json(String),
}

const PRIORITIES: [&str; 5] = ["", "guaranteed", "burst", "preemptible", "urgent"];

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let (ring, verifier) = keys();
    match input {
        Input::Token(token) => {
            // Only a token signed by the control plane passes; the fuzzer cannot forge Ed25519.
            assert!(
                verifier.verify(&token).is_err(),
                "an unsigned token was accepted: {token:?}"
            );
        }
        Input::Claims { typ_ok, exp_in, gpus } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let claims = TicketClaims {
                typ: if typ_ok {
                    TICKET_TYP.into()
                } else {
                    "vgpu-access".into()
                },
                sub: "tenant".into(),
                sid: "session".into(),
                iat: now,
                exp: now.saturating_add_signed(i64::from(exp_in)),
                gpus: gpus
                    .iter()
                    .map(|g| TicketGpu {
                        server_id: format!("srv-{}", g.server % 4),
                        server_address: "10.0.0.1:7070".into(),
                        gpu_uuid: format!("GPU-{}", g.gpu % 8),
                        gpu_index: u32::from(g.gpu % 8),
                        memory_limit_mib: g.memory_limit_mib,
                        compute_share: g.compute_share,
                        priority: PRIORITIES[usize::from(g.priority) % PRIORITIES.len()].into(),
                        share_cap: g.share_cap,
                        tls_cert_sha256: None,
                    })
                    .collect(),
            };
            let Ok(token) = ring.sign(&claims) else { return };
            if let Ok(got) = verifier.verify(&token) {
                assert!(
                    typ_ok && i64::from(exp_in) > -5,
                    "accepted a ticket of the wrong type or expired"
                );
                assert_plausible(&got);
            }
        }
        Input::Json(text) => {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                return;
            };
            let Ok(token) = ring.sign(&value) else { return };
            if let Ok(got) = verifier.verify(&token) {
                assert_eq!(got.typ, TICKET_TYP);
                assert_plausible(&got);
            }
        }
    }
}

fn assert_plausible(c: &TicketClaims) {
    assert!(
        !c.gpus.is_empty() && c.gpus.len() <= MAX_TICKET_GPUS,
        "{} GPUs",
        c.gpus.len()
    );
    let mut memory: u64 = 0;
    for (i, g) in c.gpus.iter().enumerate() {
        assert!(g.compute_share.is_finite() && g.compute_share > 0.0 && g.compute_share <= 1.0);
        assert!(vgpu_control::ticket::TICKET_PRIORITIES.contains(&g.priority.as_str()));
        assert!(g.memory_limit_mib > 0);
        assert!(
            !c.gpus[..i]
                .iter()
                .any(|o| o.server_id == g.server_id && o.gpu_uuid == g.gpu_uuid),
            "GPU listed twice"
        );
        memory = memory
            .checked_add(g.memory_limit_mib)
            .unwrap_or_else(|| panic!("memory limits overflow"));
    }
    assert!(memory.checked_mul(1 << 20).is_some(), "memory limits overflow in bytes");
}
