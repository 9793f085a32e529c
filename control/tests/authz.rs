//! Authorization: a tenant never sees another tenant's data, and expired, revoked and forged tokens (access
//! tokens, server tokens and session tickets) are refused.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;
use vgpu_control::auth::{now, AccessClaims, ACCESS_TYP};
use vgpu_control::signing::{KeyRing, KeySource};
use vgpu_control::store::{Db, MemStore};

/// A key ring of its own: what a forger without the control plane's keys can sign with.
fn forger() -> KeyRing {
    KeyRing::open(KeySource::Memory, &Db::new(Box::new(MemStore::default()))).unwrap()
}
use vgpu_control::ticket::{verify_ticket, TicketClaims, TicketError, TICKET_TYP};

struct Two {
    h: H,
    a: (String, String, String),
    b: (String, String, String),
    b_session: String,
    stok: String,
}

fn two_tenants() -> Two {
    let h = H::new();
    let (_, stok) = h.server("n1", 2);
    let a = h.tenant("alice");
    let b = h.tenant("bob");
    h.assign(&a.0, "GPU-n1-0", None, None);
    h.assign(&b.0, "GPU-n1-1", None, None);
    h.ok(201, "POST", "/v1/tickets", Some(&a.2), None);
    let b_session = h.ok(201, "POST", "/v1/tickets", Some(&b.2), None)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(
        202,
        "POST",
        "/v1/usage",
        Some(&stok),
        Some(json!({"records": [{"session_id": b_session, "gpu_uuid": "GPU-n1-1", "period_start": now() - 2, "period_end": now() - 1, "gpu_seconds": 1.0}]})),
    );
    Two {
        h,
        a,
        b,
        b_session,
        stok,
    }
}

#[test]
fn a_tenant_never_sees_another_tenants_data() {
    let t = two_tenants();
    let (h, ka) = (&t.h, Some(t.a.2.as_str()));
    let (bid, bkid) = (&t.b.0, &t.b.1);
    // Direct access to B's objects: not found, as if they did not exist.
    for (m, p) in [
        ("GET", format!("/v1/tenants/{bid}")),
        ("GET", format!("/v1/tenants/{bid}/keys")),
        ("POST", format!("/v1/keys/{bkid}/rotate")),
        ("DELETE", format!("/v1/keys/{bkid}")),
        ("DELETE", format!("/v1/sessions/{}", t.b_session)),
        ("GET", format!("/v1/usage?tenant_id={bid}")),
    ] {
        let (s, v) = h.call(m, &p, ka, None);
        assert_eq!(s, 404, "{m} {p}: {v}");
    }
    // Admin-only routes: forbidden.
    for (m, p, body) in [
        ("POST", "/v1/tenants".to_string(), json!({"name": "x"})),
        ("PATCH", format!("/v1/tenants/{bid}"), json!({"name": "x"})),
        ("DELETE", format!("/v1/tenants/{bid}"), json!({})),
        ("POST", format!("/v1/tenants/{bid}/keys"), json!({})),
        ("GET", "/v1/servers".to_string(), json!({})),
        ("POST", "/v1/plans".to_string(), json!({"name": "p", "rates": []})),
        (
            "POST",
            "/v1/assignments".to_string(),
            json!({"tenant_id": t.a.0, "gpu_uuid": "GPU-n1-1"}),
        ),
        ("POST", "/v1/usage".to_string(), json!({"records": []})),
    ] {
        let (s, v) = h.call(m, &p, ka, Some(body));
        assert_eq!(s, 403, "{m} {p}: {v}");
    }
    // Listings hold only A's objects, whatever the filter says.
    let everything = [
        h.ok(200, "GET", "/v1/tenants", ka, None),
        h.ok(200, "GET", "/v1/gpus", ka, None),
        h.ok(200, "GET", &format!("/v1/assignments?tenant_id={bid}"), ka, None),
        h.ok(200, "GET", &format!("/v1/sessions?tenant_id={bid}"), ka, None),
        h.ok(200, "GET", "/v1/usage", ka, None),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<String>();
    for secret in [bid.as_str(), "GPU-n1-1", t.b_session.as_str(), "bob"] {
        assert!(!everything.contains(secret), "A saw {secret}: {everything}");
    }
    assert!(everything.contains("GPU-n1-0"));
    // A's ticket names only A's GPU.
    let g = h.ok(201, "POST", "/v1/tickets", ka, None);
    assert_eq!(g["gpus"].as_array().unwrap().len(), 1);
    assert_eq!(g["gpus"][0]["gpu_uuid"], "GPU-n1-0");
}

#[test]
fn expired_access_token_is_refused() {
    let h = H::new();
    let (tid, kid, _) = h.tenant("a");
    let claims = AccessClaims {
        typ: ACCESS_TYP.into(),
        sub: tid,
        role: "tenant".into(),
        kid: Some(kid),
        iat: now() - 3600,
        exp: now() - 600,
    };
    let tok = h.app.keys().sign(&claims).unwrap();
    let (s, v) = h.call("GET", "/v1/me", Some(&tok), None);
    assert_eq!(s, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"), "{v}");
}

#[test]
fn revoked_key_kills_its_tokens_at_once() {
    let h = H::new();
    let (_, kid, key) = h.tenant("a");
    let tok = h.ok(200, "POST", "/v1/auth/token", None, Some(json!({"api_key": key})))["token"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(200, "GET", "/v1/me", Some(&tok), None);
    h.ok(200, "DELETE", &format!("/v1/keys/{kid}"), Some(ADMIN_KEY), None);
    assert_eq!(h.call("GET", "/v1/me", Some(&tok), None).0, 401);
    assert_eq!(h.call("GET", "/v1/me", Some(&key), None).0, 401);
    assert_eq!(
        h.call("POST", "/v1/auth/token", None, Some(json!({"api_key": key}))).0,
        401
    );
    assert_eq!(h.call("POST", "/v1/tickets", Some(&key), None).0, 401);
}

#[test]
fn forged_tokens_are_refused() {
    let h = H::new();
    let (tid, kid, key) = h.tenant("a");
    let forger = forger();
    // A well-formed admin token signed by the wrong key.
    let (fake_admin, _) = forger
        .access_token(vgpu_control::model::Role::Admin, "admin", "admin01", 60)
        .unwrap();
    assert_eq!(h.call("GET", "/v1/tenants", Some(&fake_admin), None).0, 401);
    // A real tenant token with its payload edited to say admin.
    let tok = h.ok(200, "POST", "/v1/auth/token", None, Some(json!({"api_key": key})))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = tok.split('.').collect();
    let tampered_claims = AccessClaims {
        typ: ACCESS_TYP.into(),
        sub: tid.clone(),
        role: "admin".into(),
        kid: Some(kid.clone()),
        iat: now(),
        exp: now() + 60,
    };
    let forged_payload = forger.sign(&tampered_claims).unwrap();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        forged_payload.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(h.call("GET", "/v1/tenants", Some(&tampered), None).0, 401);
    // A correctly signed token whose role does not match its key.
    let mismatched = h.app.keys().sign(&tampered_claims).unwrap();
    assert_eq!(h.call("GET", "/v1/tenants", Some(&mismatched), None).0, 401);
    // "alg: none" and garbage.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    for bad in [none.as_str(), "a.b.c", "", "vgpu_admin01_wrongwrongwrongwrong", "vgpu_"] {
        assert_eq!(h.call("GET", "/v1/me", Some(bad), None).0, 401, "{bad}");
    }
    // A session ticket is not an access token.
    h.server("n1", 1);
    h.assign(&tid, "GPU-n1-0", None, None);
    let ticket = h.ok(201, "POST", "/v1/tickets", Some(&key), None)["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(h.call("GET", "/v1/me", Some(&ticket), None).0, 401);
}

#[test]
fn server_tokens_are_scoped_to_their_server() {
    let h = H::new();
    let (s1, _) = h.server("n1", 1);
    let (_, t2) = h.server("n2", 1);
    assert_eq!(
        h.call(
            "POST",
            &format!("/v1/servers/{s1}/heartbeat"),
            Some(&t2),
            Some(json!({}))
        )
        .0,
        403
    );
    assert_eq!(h.call("GET", &format!("/v1/servers/{s1}"), Some(&t2), None).0, 403);
    assert_eq!(h.call("GET", "/v1/tenants", Some(&t2), None).0, 403);
    let forged = format!("vgpus_{s1}_0123456789abcdefghijklmnopqrstuvwxyzABCD");
    assert_eq!(
        h.call(
            "POST",
            &format!("/v1/servers/{s1}/heartbeat"),
            Some(&forged),
            Some(json!({}))
        )
        .0,
        401
    );
    // A server cannot report usage for a GPU of another server.
    let t = two_tenants();
    let (_, other_tok) = t.h.server("n9", 1);
    let bad = json!({"records": [{"session_id": t.b_session, "gpu_uuid": "GPU-n1-1", "period_start": now() - 2, "period_end": now() - 1}]});
    assert_eq!(
        t.h.call("POST", "/v1/usage", Some(&other_tok), Some(bad.clone())).0,
        403
    );
    assert_eq!(t.h.call("POST", "/v1/usage", Some(&t.stok), Some(bad)).0, 202);
}

#[test]
fn tickets_verify_only_when_genuine_and_fresh() {
    let h = H::new();
    h.server("n1", 1);
    let (tid, _, key) = h.tenant("a");
    h.assign(&tid, "GPU-n1-0", Some(1024), Some(0.5));
    let pem = h.app.public_key_pem().to_string();
    let good = h.ok(201, "POST", "/v1/tickets", Some(&key), None)["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let claims = verify_ticket(pem.as_bytes(), &good).unwrap();
    assert_eq!(claims.typ, TICKET_TYP);

    let mut expired: TicketClaims = claims.clone();
    expired.exp = now() - 600;
    let tok = h.app.keys().sign(&expired).unwrap();
    assert!(matches!(verify_ticket(pem.as_bytes(), &tok), Err(TicketError::Expired)));

    let forged = forger().sign(&claims).unwrap();
    assert!(matches!(
        verify_ticket(pem.as_bytes(), &forged),
        Err(TicketError::BadSignature)
    ));

    let mut wrong_typ = claims.clone();
    wrong_typ.typ = ACCESS_TYP.into();
    let tok = h.app.keys().sign(&wrong_typ).unwrap();
    assert!(matches!(
        verify_ticket(pem.as_bytes(), &tok),
        Err(TicketError::WrongType)
    ));

    // Correctly signed but not something the control plane issues (a leaked signing key minted a ticket with one
    // GPU listed three times, its limits summed, in issue 14): refused by every GPU server.
    let implausible = |edit: &dyn Fn(&mut TicketClaims)| {
        let mut c = claims.clone();
        edit(&mut c);
        verify_ticket(pem.as_bytes(), &h.app.keys().sign(&c).unwrap())
    };
    type Edit = Box<dyn Fn(&mut TicketClaims)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "one GPU listed three times",
            Box::new(|c| c.gpus = vec![c.gpus[0].clone(); 3]),
        ),
        ("no GPU", Box::new(|c| c.gpus.clear())),
        ("a share above 1", Box::new(|c| c.gpus[0].compute_share = 1.5)),
        ("a zero share", Box::new(|c| c.gpus[0].compute_share = 0.0)),
        (
            "memory limits overflowing in bytes",
            Box::new(|c| c.gpus[0].memory_limit_mib = u64::MAX >> 10),
        ),
        (
            "an unknown priority class",
            Box::new(|c| c.gpus[0].priority = "urgent".into()),
        ),
        ("an expiry before the issue time", Box::new(|c| c.iat = c.exp + 1)),
    ];
    for (what, edit) in &cases {
        assert!(
            matches!(implausible(edit), Err(TicketError::Implausible(_))),
            "{what}: accepted"
        );
    }

    let access = h.ok(200, "POST", "/v1/auth/token", None, Some(json!({"api_key": key})))["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        verify_ticket(pem.as_bytes(), &access).is_err(),
        "an access token is not a ticket"
    );
    assert!(verify_ticket(pem.as_bytes(), "garbage").is_err());
    assert!(matches!(
        verify_ticket(b"not a pem", &good),
        Err(TicketError::BadKey(_))
    ));
}
