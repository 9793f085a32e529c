//! Prometheus text exposition for `/metrics`: request counters kept here, gauges computed at scrape time.
//! Hand-written because the format is a few lines and a metrics crate would add more than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // Only known methods become label values, so a client cannot grow the map without bound.
        let method = match method {
            "GET" | "POST" | "PATCH" | "DELETE" | "PUT" => method.to_string(),
            _ => "OTHER".to_string(),
        };
        *m.entry((method, route, status)).or_default() += 1;
    }

    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP vgpu_control_http_requests_total HTTP requests by method, route and status."
        );
        let _ = writeln!(out, "# TYPE vgpu_control_http_requests_total counter");
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "vgpu_control_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}
