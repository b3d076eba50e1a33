//! The cron schedule syntax CronJobs use, as upstream parses it (robfig/cron's standard
//! parser): five fields (minute, hour, day of month, month, day of week) with lists, ranges,
//! steps, `*`/`?` and month/day names, or a descriptor (`@hourly`, `@daily`, `@every 90s`...).
//! Errors read as upstream's, since kubectl shows them in the 422 message.

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Fields {
        minute: u64,
        hour: u64,
        day_of_month: u64,
        month: u64,
        day_of_week: u64,
        /// Whether day of month / day of week were `*` or `?`: when one is, only the other
        /// restricts the day (cron's rule: restricted fields are OR-ed).
        dom_any: bool,
        dow_any: bool,
    },
    /// `@every <duration>`, in seconds (at least one).
    Every(u64),
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// Parses a schedule; the error is upstream's message for it.
pub fn parse(spec: &str) -> Result<Schedule, String> {
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    let mut spec = spec.trim();
    // A leading time zone, which the parser accepts (and CronJob validation then forbids).
    if let Some(rest) = spec
        .strip_prefix("TZ=")
        .or_else(|| spec.strip_prefix("CRON_TZ="))
    {
        let (zone, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if zone != "UTC" && jiff::tz::db().get(zone).is_err() {
            return Err(format!(
                "provided bad location {zone}: unknown time zone {zone}"
            ));
        }
        spec = rest.trim();
    }
    if spec.starts_with('@') {
        return descriptor(spec);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    let (minute, _) = field(fields[0], &MINUTES)?;
    let (hour, _) = field(fields[1], &HOURS)?;
    let (day_of_month, dom_any) = field(fields[2], &DAYS_OF_MONTH)?;
    let (month, _) = field(fields[3], &MONTHS)?;
    let (day_of_week, dow_any) = field(fields[4], &DAYS_OF_WEEK)?;
    Ok(Schedule::Fields {
        minute,
        hour,
        day_of_month,
        month,
        day_of_week,
        dom_any,
        dow_any,
    })
}

fn all(b: &Bounds) -> u64 {
    bits(b.min, b.max, 1)
}

fn bits(min: u32, max: u32, step: u32) -> u64 {
    (min..=max)
        .step_by(step as usize)
        .fold(0u64, |acc, v| acc | (1u64 << v))
}

fn descriptor(spec: &str) -> Result<Schedule, String> {
    let daily =
        |hour_bits: u64, dom: u64, month: u64, dow: u64, dom_any, dow_any| Schedule::Fields {
            minute: 1,
            hour: hour_bits,
            day_of_month: dom,
            month,
            day_of_week: dow,
            dom_any,
            dow_any,
        };
    let (dom, month, dow) = (all(&DAYS_OF_MONTH), all(&MONTHS), all(&DAYS_OF_WEEK));
    Ok(match spec {
        "@yearly" | "@annually" => daily(1, 1 << 1, 1 << 1, dow, false, true),
        "@monthly" => daily(1, 1 << 1, month, dow, false, true),
        "@weekly" => daily(1, dom, month, 1, true, false),
        "@daily" | "@midnight" => daily(1, dom, month, dow, true, true),
        "@hourly" => daily(all(&HOURS), dom, month, dow, true, true),
        _ => match spec.strip_prefix("@every ") {
            Some(d) => {
                let secs = go_duration(d.trim())
                    .map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
                Schedule::Every(secs.max(1))
            }
            None => return Err(format!("unrecognized descriptor: {spec}")),
        },
    })
}

/// A Go duration (`1h30m`, `90s`, `1.5h`) in whole seconds.
fn go_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("time: invalid duration {s:?}");
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(bad());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        nanos += value * scale;
        rest = &rest[unit_len..];
    }
    Ok((nanos / 1e9) as u64)
}

/// One field: a comma-separated list of ranges; true if one of them is an unstepped `*`/`?`.
fn field(text: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut out = 0;
    let mut any = false;
    for part in text.split(',') {
        let (bits, star) = range(part, b)?;
        out |= bits;
        any |= star;
    }
    Ok((out, any))
}

/// `*`, `?`, `n`, `a-b`, each with an optional `/step`; true for a `*` or `?` stepping by 1.
fn range(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let (low_high, step) = match expr.split('/').collect::<Vec<_>>().as_slice() {
        [lh] => (*lh, None),
        [lh, step] => (*lh, Some(*step)),
        _ => return Err(format!("too many slashes: {expr}")),
    };
    let bounds: Vec<&str> = low_high.split('-').collect();
    let star = matches!(low_high, "*" | "?");
    let (start, mut end, single) = if star {
        (b.min, b.max, false)
    } else {
        let start = value(bounds[0], b)?;
        match bounds.len() {
            1 => (start, start, true),
            2 => (start, value(bounds[1], b)?, false),
            _ => return Err(format!("too many hyphens: {low_high}")),
        }
    };
    let step = match step {
        None => 1,
        Some(s) => {
            let n = number(s)?;
            // `n/step` means from n to the end, stepping.
            if single {
                end = b.max;
            }
            if n == 0 {
                return Err(format!("step of range should be a positive number: {expr}"));
            }
            n
        }
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    Ok((bits(start, end, step), star && step == 1))
}

fn value(text: &str, b: &Bounds) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + if b.names.len() == 12 { 1 } else { 0 });
    }
    number(text)
}

fn number(text: &str) -> Result<u32, String> {
    match text.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("negative number ({n}) not allowed: {text}")),
        // Larger than any field: the range check reports it.
        Ok(n) => Ok(n.min(i64::from(u32::MAX / 2)) as u32),
        Err(_) => Err(format!(
            "failed to parse int from {text}: strconv.Atoi: parsing {text:?}: invalid syntax"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_schedules() {
        for s in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * 0",
            "0 9-17 * * MON-FRI",
            "15,45 */2 1 jan,jul ?",
            "5/10 * * * *",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@every 1h30m",
            "  0 12 * * *  ",
            "TZ=UTC 0 12 * * *",
            "CRON_TZ=Europe/Berlin @daily",
        ] {
            assert!(parse(s).is_ok(), "{s}: {:?}", parse(s));
        }
    }

    #[test]
    fn bits_of_fields() {
        let Ok(Schedule::Fields {
            minute,
            hour,
            day_of_week,
            dow_any,
            dom_any,
            ..
        }) = parse("*/20 9-11 * * mon,fri")
        else {
            panic!("parses");
        };
        assert_eq!(minute, 1 | 1 << 20 | 1 << 40);
        assert_eq!(hour, 1 << 9 | 1 << 10 | 1 << 11);
        assert_eq!(day_of_week, 1 << 1 | 1 << 5);
        assert!(dom_any && !dow_any);
        let Ok(Schedule::Fields { dom_any, .. }) = parse("0 0 */2 * *") else {
            panic!("parses");
        };
        assert!(!dom_any);
        assert_eq!(parse("@every 90s"), Ok(Schedule::Every(90)));
    }

    #[test]
    fn errors_read_as_upstream() {
        for (s, want) in [
            ("", "empty spec string"),
            ("* * *", "expected exactly 5 fields, found 3: [* * *]"),
            ("61 * * * *", "end of range (61) above maximum (59): 61"),
            (
                "* 5-2 * * *",
                "beginning of range (5) beyond end of range (2): 5-2",
            ),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("1/2/3 * * * *", "too many slashes: 1/2/3"),
            ("x * * * *", "failed to parse int from x: "),
            ("-1 * * * *", "failed to parse int from : "),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            ("@every soon", "failed to parse duration @every soon: "),
        ] {
            let err = parse(s).expect_err(s);
            assert!(err.starts_with(want), "{s}: {err}");
        }
    }
}
