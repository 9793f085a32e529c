//! Link shapes (a round-trip time and a rate) for measuring vGPU as if client and server sat a network apart, the
//! model that predicts an operation's time on a shape from its round trips and bytes, and the shaping relay.
//!
//! A shape is written `RATE-RTT`: `100g-10us`, `25g-50us`, `10g-500us`, `1g-5ms` (rates in bits per second with
//! k/m/g/t, `inf` for no limit; times in ns/us/ms/s). `relay` (and `wire`) is `inf-0us`: the emulator with no
//! shaping, whose own cost is measured against the direct connection and subtracted. `loopback` means no emulator.

pub mod relay;
pub mod wire;

use std::fmt;
use std::time::Duration;

/// The four shapes of issue 21, from a rack-local fat link to a long thin one.
pub const STANDARD_SHAPES: [&str; 4] = ["100g-10us", "25g-50us", "10g-500us", "1g-5ms"];

/// The largest round-trip time a shape may ask for: a relay holds a round trip of data per direction.
pub const MAX_RTT: Duration = Duration::from_secs(2);
/// The highest rate a shape may name (bits per second): 10 Tb/s.
pub const MAX_RATE_BPS: u64 = 10_000_000_000_000;

/// A link between client and server: its round-trip time (the relay delays each direction by half) and its rate
/// in each direction (full duplex), `None` for unlimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkShape {
    /// As written (`10g-500us`), or `loopback`.
    pub name: String,
    pub rtt: Duration,
    /// Bits per second, each direction.
    pub rate_bps: Option<u64>,
    /// `loopback`: no relay in the path at all (the direct connection).
    pub direct: bool,
}

impl LinkShape {
    /// The direct connection (no relay).
    pub fn loopback() -> LinkShape {
        LinkShape {
            name: "loopback".into(),
            rtt: Duration::ZERO,
            rate_bps: None,
            direct: true,
        }
    }

    /// Parses `RATE-RTT`, `relay` or `loopback` (see the module documentation).
    pub fn parse(text: &str) -> Result<LinkShape, String> {
        let text = text.trim();
        match text {
            "loopback" | "direct" => return Ok(LinkShape::loopback()),
            "relay" | "wire" => return LinkShape::parse("inf-0us").map(|s| LinkShape { name: text.into(), ..s }),
            _ => {}
        }
        let (rate, rtt) = text
            .split_once('-')
            .ok_or_else(|| format!("link shape '{text}': expected RATE-RTT such as 10g-500us, or relay/loopback"))?;
        let rate_bps = parse_rate(rate).map_err(|e| format!("link shape '{text}': {e}"))?;
        let rtt = parse_duration(rtt).map_err(|e| format!("link shape '{text}': {e}"))?;
        if rtt > MAX_RTT {
            return Err(format!(
                "link shape '{text}': round trips above {MAX_RTT:?} are not supported"
            ));
        }
        Ok(LinkShape {
            name: text.to_string(),
            rtt,
            rate_bps,
            direct: false,
        })
    }

    /// Parses a comma-separated list; `standard` stands for the four shapes of issue 21.
    pub fn parse_list(text: &str) -> Result<Vec<LinkShape>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "standard" {
                for s in STANDARD_SHAPES {
                    out.push(LinkShape::parse(s)?);
                }
            } else {
                out.push(LinkShape::parse(part)?);
            }
        }
        if out.is_empty() {
            return Err("no link shape given".into());
        }
        Ok(out)
    }

    /// The delay the relay adds to each direction.
    pub fn one_way(&self) -> Duration {
        self.rtt / 2
    }

    /// Bytes per second each direction, `None` for unlimited.
    pub fn bytes_per_s(&self) -> Option<f64> {
        self.rate_bps.map(|b| b as f64 / 8.0)
    }

    /// The bandwidth-delay product in bytes (what must be in flight to fill the link), `None` without a rate.
    pub fn bdp_bytes(&self) -> Option<u64> {
        self.bytes_per_s().map(|r| (r * self.rtt.as_secs_f64()).ceil() as u64)
    }

    /// How long `bytes` take to cross the link at its rate (zero without one).
    pub fn serialization(&self, bytes: f64) -> Duration {
        match self.bytes_per_s() {
            Some(r) if r > 0.0 => Duration::from_secs_f64(bytes.max(0.0) / r),
            _ => Duration::ZERO,
        }
    }

    /// The link's own cost of an operation: `round_trips × RTT + bytes ÷ rate` (the model of issue 21), where
    /// `bytes` is what crosses the busier direction.
    pub fn link_time(&self, round_trips: f64, bytes: f64) -> Duration {
        self.rtt.mul_f64(round_trips.max(0.0)) + self.serialization(bytes)
    }

    /// The predicted time of an operation that takes `base` without the link's delay and rate (measured on the
    /// direct connection, or through the relay with no shaping): every round trip adds the RTT, and moving the
    /// bytes takes the longer of the base time and the link's serialization (the two overlap).
    pub fn predict(&self, base: Duration, round_trips: f64, bytes: f64) -> Duration {
        self.rtt.mul_f64(round_trips.max(0.0)) + base.max(self.serialization(bytes))
    }
}

impl fmt::Display for LinkShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `100g`, `25G`, `2.5g`, `800m`, `inf` (bits per second).
fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "inf" | "unlimited" | "0") {
        return Ok(None);
    }
    let t = t.trim_end_matches("bit").trim_end_matches("bps");
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        Some('t') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("rate '{text}' is not a number with k/m/g/t"))?;
    let bps = v * mult;
    if !bps.is_finite() || bps < 1e3 || bps > MAX_RATE_BPS as f64 {
        return Err(format!("rate '{text}' outside 1k..10t bits per second"));
    }
    Ok(Some(bps as u64))
}

/// `10us`, `500µs`, `5ms`, `0.5ms`, `1s`, `100ns`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim().to_ascii_lowercase().replace('µ', "u");
    let units = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0)];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.to_string(), *m)))
        .ok_or_else(|| format!("time '{text}' needs a unit: ns, us, ms or s"))?;
    let v: f64 = num.parse().map_err(|_| format!("time '{text}' is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("time '{text}' must be a non-negative number"));
    }
    Ok(Duration::from_secs_f64((v * mult).min(MAX_RTT.as_secs_f64() * 2.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_shapes() {
        let shapes = LinkShape::parse_list("standard").expect("standard");
        let got: Vec<(Duration, Option<u64>)> = shapes.iter().map(|s| (s.rtt, s.rate_bps)).collect();
        assert_eq!(
            got,
            vec![
                (Duration::from_micros(10), Some(100_000_000_000)),
                (Duration::from_micros(50), Some(25_000_000_000)),
                (Duration::from_micros(500), Some(10_000_000_000)),
                (Duration::from_millis(5), Some(1_000_000_000)),
            ]
        );
        // 10 Gb/s × 500 µs: 625 000 bytes in flight.
        assert_eq!(shapes[2].bdp_bytes(), Some(625_000));
        let relay = LinkShape::parse("relay").expect("relay");
        assert_eq!((relay.rtt, relay.rate_bps, relay.direct), (Duration::ZERO, None, false));
        assert!(LinkShape::parse("loopback").expect("loopback").direct);
        assert_eq!(
            LinkShape::parse("2.5g-1.5ms").expect("fractions").rate_bps,
            Some(2_500_000_000)
        );
    }

    #[test]
    fn refuses_bad_shapes() {
        for bad in [
            "",
            "10g",
            "10g-",
            "-5ms",
            "fast-5ms",
            "10g-5",
            "10g-5parsecs",
            "10g--5ms",
            "1-5ms",
            "100t-1ms",
        ] {
            assert!(LinkShape::parse(bad).is_err(), "'{bad}' was accepted");
        }
        assert!(LinkShape::parse("1g-3s").is_err(), "an RTT above MAX_RTT was accepted");
        assert!(LinkShape::parse_list(" , ").is_err());
    }

    #[test]
    fn model_adds_round_trips_and_overlaps_bytes() {
        let s = LinkShape::parse("1g-5ms").expect("shape");
        // 3 round trips and 125 MB at 125 MB/s: 15 ms + 1 s.
        assert_eq!(s.link_time(3.0, 125e6), Duration::from_millis(1015));
        // A copy that took 0.2 s on loopback is bound by the link's second, not added to it.
        assert_eq!(
            s.predict(Duration::from_millis(200), 1.0, 125e6),
            Duration::from_millis(1005)
        );
        // A round-trip-bound call keeps its base time and pays the RTT on top.
        assert_eq!(
            s.predict(Duration::from_micros(20), 1.0, 100.0),
            Duration::from_micros(5020)
        );
    }
}
