//! Durations (`"1h30m"`) and byte sizes (`"1.5G"`) as gov.toml, the command line
//! and the protocol write them: pure `&str` parsers and the way back.

use std::time::Duration;

/// 200 years: past any useful timeout, and far inside what the daemon adds it to
/// (u64 milliseconds since the epoch, `Instant`).
pub const MAX_DURATION: Duration = Duration::from_secs(200 * 365 * 86_400);

/// Duration units in nanoseconds. Not humantime's: there `M` is a month, a trap
/// beside sizes where `M` is a mebibyte.
const DURATION_UNITS: [(&str, u128); 8] = {
    const S: u128 = 1_000_000_000;
    let (ns, us, ms) = (1, 1_000, 1_000_000);
    let (m, h, d, w) = (60 * S, 3600 * S, 86_400 * S, 604_800 * S);
    [
        ("ns", ns),
        ("us", us),
        ("ms", ms),
        ("s", S),
        ("m", m),
        ("h", h),
        ("d", d),
        ("w", w),
    ]
};

const DURATION_FORM: &str =
    "durations look like \"5m\", \"90s\", \"1h30m\" (units: ms, s, m, h, d, w)";

/// `"30m"`, `"1h30m"`, `"1h 30m"`, `"1.5h"`, `"0"`, ... up to [`MAX_DURATION`]; no
/// sign, no bare number but 0, no space inside a number-unit pair.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = |what: String| Err(format!("{what}; {DURATION_FORM}"));
    match t {
        _ if t.starts_with('-') => return Err("negative durations are not allowed".into()),
        "0" => return Ok(Duration::ZERO),
        "" => return bad("empty".into()),
        _ => {}
    }
    let (mut rest, mut nanos) = (t, 0u128);
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic());
        let (unit, after) = after.split_at(unit_len.unwrap_or(after.len()));
        let scale = DURATION_UNITS.iter().find(|(u, _)| *u == unit);
        let n = match (num, unit, scale) {
            ("", _, _) => return bad(format!("expected a number at {rest:?}")),
            (_, "", _) => return bad(format!("missing unit after {num:?}")),
            (_, _, None) => return bad(format!("unknown unit {unit:?}")),
            (_, _, Some((_, scale))) => scaled_decimal(num, *scale),
        };
        let Some(n) = n else {
            return bad(format!("invalid number {num:?}"));
        };
        nanos = nanos.saturating_add(n);
        rest = after.trim_start();
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(format!("{t:?} is too long: at most 73000d (200 years)"));
    }
    Ok(Duration::from_nanos(nanos as u64)) // in range: MAX_DURATION < u64::MAX ns
}

/// The shortest spelling [`parse_duration`] reads back exactly: `"1h30m"`, `"0s"`.
/// Days are the largest unit (weeks read worse in `gov ps`).
pub fn format_duration(d: Duration) -> String {
    let mut rest = d.as_nanos();
    let mut out = String::new();
    for (unit, scale) in DURATION_UNITS.iter().rev().skip(1) {
        if rest >= *scale {
            out += &format!("{}{unit}", rest / scale);
            rest %= scale;
        }
    }
    if out.is_empty() {
        out += "0s";
    }
    out
}

const SIZE_FORM: &str = "write sizes like \"4G\", \"512M\", \"1.5G\" or \"4096\" (bytes)";

/// A byte size: `"4G"`, `"1.5G"`, `"4096"`, `"4KiB"`. K..E in either case are powers
/// of 1024, as in the kernel and systemd; `"4GB"` is refused as ambiguous.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s);
    let bad = |what: &str| format!("{what}; {SIZE_FORM}");
    let shift = match unit {
        _ if num.is_empty() => return Err(bad("expected a number")),
        "" | "B" if num.contains('.') => return Err(bad("fractional bytes")),
        "" | "B" => 0,
        _ if unit.starts_with(char::is_whitespace) => return Err(bad("unexpected space")),
        _ => size_unit_shift(unit)?,
    };
    let bytes =
        scaled_decimal(num, 1 << shift).ok_or_else(|| bad(&format!("invalid number {num:?}")))?;
    u64::try_from(bytes).map_err(|_| "too large".to_string())
}

fn size_unit_shift(unit: &str) -> Result<u32, String> {
    let mut chars = unit.chars();
    let letter = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('?');
    match ("KMGTPE".find(letter), chars.as_str()) {
        (Some(i), "" | "iB") => Ok(10 * (i as u32 + 1)),
        (Some(_), "B" | "b") => Err(format!(
            "{unit:?} is ambiguous (powers of 1000 or 1024?): write \"{letter}\" or \"{letter}iB\", both 1024-based"
        )),
        _ => Err(format!(
            "unknown unit {unit:?} (units: K, M, G, T, P, E or KiB..EiB, 1024-based; none = bytes)"
        )),
    }
}

/// Splits off the leading `digits[.digits]` part.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.'));
    s.split_at(end.unwrap_or(s.len()))
}

/// `digits[.digits]` times `scale`, rounded down; `None` if malformed or too large.
pub(crate) fn scaled_decimal(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (num.contains('.') && !digits(frac)) {
        return None;
    }
    // Digits past the 18th cannot add a whole unit of any scale used here.
    let frac = &frac[..frac.len().min(18)];
    let part = frac
        .parse::<u128>()
        .map_or(0, |f| f * scale / 10u128.pow(frac.len() as u32));
    int.parse::<u128>()
        .ok()?
        .checked_mul(scale)?
        .checked_add(part)
}
