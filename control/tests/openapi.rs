//! Checks the server against `api-spec/openapi.yaml`: routes in both directions, and every response of a tour
//! over all routes against its documented status and schema (no undocumented fields allowed).
#![allow(clippy::unwrap_used)]

mod common;
use serde_json::Value;
use std::collections::BTreeSet;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api-spec/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            resolve(spec, spec.pointer(ptr).unwrap_or_else(|| panic!("dangling $ref {r}")))
        }
        None => v,
    }
}

/// Returns every mismatch between `value` and `schema`.
fn validate(spec: &Value, schema: &Value, value: &Value, at: &str, errs: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errs.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array) {
        if !en.contains(value) {
            errs.push(format!("{at}: {value} not in enum {en:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errs.push(format!("{at}: expected object, got {value}"));
                return;
            };
            let props = schema
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: required field {r} missing"));
                }
            }
            for (k, v) in obj {
                match props.get(k) {
                    Some(ps) => validate(spec, ps, v, &format!("{at}.{k}"), errs),
                    None => errs.push(format!("{at}: field {k} is not in the spec")),
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(a) => {
                for (i, x) in a.iter().enumerate() {
                    validate(spec, &schema["items"], x, &format!("{at}[{i}]"), errs);
                }
            }
            None => errs.push(format!("{at}: expected array")),
        },
        Some("string") if !value.is_string() => errs.push(format!("{at}: expected string, got {value}")),
        Some("integer") if !(value.is_u64() || value.is_i64()) => {
            errs.push(format!("{at}: expected integer, got {value}"))
        }
        Some("number") if !value.is_number() => errs.push(format!("{at}: expected number, got {value}")),
        Some("boolean") if !value.is_boolean() => errs.push(format!("{at}: expected boolean, got {value}")),
        Some(_) => {}
        None => errs.push(format!("{at}: schema without a type")),
    }
}

fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(*m).is_some() {
                ops.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn every_route_is_in_the_spec_and_every_spec_path_is_served() {
    let spec = spec();
    let served: BTreeSet<(String, String)> = vgpu_control::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let documented = spec_operations(&spec);
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "served but not in openapi.yaml: {missing:?}");
    assert!(extra.is_empty(), "in openapi.yaml but not served: {extra:?}");
}

#[test]
fn every_response_matches_the_spec() {
    let spec = spec();
    let mut errs = Vec::new();
    let mut covered = BTreeSet::new();
    for e in common::tour() {
        if e.route == "unmatched" {
            // Unknown paths and methods: still the JSON error shape.
            validate(
                &spec,
                &spec["components"]["schemas"]["Error"],
                &e.body,
                "unmatched",
                &mut errs,
            );
            continue;
        }
        let op = &spec["paths"][&e.route][e.method.to_lowercase()];
        assert!(!op.is_null(), "{} {} not in spec", e.method, e.route);
        let Some(resp) = op["responses"].get(e.status.to_string()) else {
            errs.push(format!("{} {}: status {} not documented", e.method, e.route, e.status));
            continue;
        };
        if (200..300).contains(&e.status) {
            covered.insert((e.method.clone(), e.route.clone()));
        }
        let resp = resolve(&spec, resp);
        if let Some(schema) = resp["content"].get("application/json").map(|c| &c["schema"]) {
            validate(
                &spec,
                schema,
                &e.body,
                &format!("{} {} {}", e.method, e.route, e.status),
                &mut errs,
            );
        }
    }
    assert!(
        errs.is_empty(),
        "responses that break the contract:\n{}",
        errs.join("\n")
    );
    let not_exercised: Vec<_> = spec_operations(&spec)
        .into_iter()
        .filter(|op| !covered.contains(op))
        .collect();
    assert!(
        not_exercised.is_empty(),
        "operations the tour never answered with 2xx: {not_exercised:?}"
    );
}

#[test]
fn validator_catches_undocumented_and_missing_fields() {
    let spec = spec();
    let schema = serde_json::json!({"$ref": "#/components/schemas/Tenant"});
    let mut errs = Vec::new();
    validate(
        &spec,
        &schema,
        &serde_json::json!({"id": "t", "name": "n", "plan_id": null, "created_at": 1}),
        "ok",
        &mut errs,
    );
    assert!(errs.is_empty(), "{errs:?}");
    validate(
        &spec,
        &schema,
        &serde_json::json!({"id": "t", "name": "n", "plan_id": null, "created_at": 1, "x": 1}),
        "extra",
        &mut errs,
    );
    validate(
        &spec,
        &schema,
        &serde_json::json!({"id": "t", "plan_id": null, "created_at": "1"}),
        "missing",
        &mut errs,
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
}
