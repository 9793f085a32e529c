//! Standalone plans (`vgpu server --plans FILE`): static keys that each carry a compute share, a priority class and
//! an optional cap, for a server without a control plane (benchmarks, tests, a single-host pool).

use super::table::SlotConfig;

/// Most keys one plans file may hold.
const MAX_PLANS: usize = 4096;

/// Parses a plans file: one key per line, `KEY SHARE [guaranteed|burst|preemptible] [cap]`; `#` starts a comment.
pub fn parse(text: &str) -> Result<Vec<(String, SlotConfig)>, String> {
    let mut plans = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |why: String| format!("plans line {}: {why}", n + 1);
        let mut words = line.split_whitespace();
        let key = words.next().ok_or_else(|| at("no key".into()))?;
        let share: f64 = words
            .next()
            .ok_or_else(|| at("no share".into()))?
            .parse()
            .map_err(|_| at("the share is not a number".into()))?;
        if !(share > 0.0 && share <= 1.0) {
            return Err(at(format!("share {share} is not in (0, 1]")));
        }
        let mut cfg = SlotConfig {
            share,
            ..Default::default()
        };
        for w in words {
            if w == "cap" {
                cfg.cap = true;
            } else {
                cfg.class = SlotConfig::parse_class(w).map_err(at)?;
            }
        }
        if plans.iter().any(|(k, _)| k == key) {
            return Err(at(format!("key {key} is listed twice")));
        }
        plans.push((key.to_string(), cfg));
        if plans.len() > MAX_PLANS {
            return Err(format!("more than {MAX_PLANS} plans"));
        }
    }
    if plans.is_empty() {
        return Err("the plans file lists no key".into());
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::super::table::{CLASS_BURST, CLASS_GUARANTEED, CLASS_PREEMPTIBLE};
    use super::*;

    #[test]
    fn plans_parse_with_classes_and_caps() {
        let p = parse("# bench\nk1 0.1 guaranteed\nk2 0.5 cap\n\nk3 0.4 preemptible cap # spot\n").expect("parses");
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].1.class, p[0].1.share, p[0].1.cap), (CLASS_GUARANTEED, 0.1, false));
        assert_eq!((p[1].1.class, p[1].1.cap), (CLASS_BURST, true));
        assert_eq!((p[2].1.class, p[2].1.cap), (CLASS_PREEMPTIBLE, true));
    }

    #[test]
    fn bad_plans_are_refused_with_their_line() {
        for (text, why) in [
            ("k", "line 1: no share"),
            ("k 0", "not in (0, 1]"),
            ("k 1.5", "not in (0, 1]"),
            ("k x", "not a number"),
            ("k 0.5 gold", "unknown priority class"),
            ("k 0.5\nk 0.2", "line 2: key k is listed twice"),
            ("# nothing", "no key"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
