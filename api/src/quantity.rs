//! Resource quantities (`250m`, `1.5`, `128Mi`, `1G`, `1e3`) as integers the scheduler and the
//! agent can add and compare: CPU in millicores, everything else in whole units (bytes).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

/// A parsed quantity, kept as an exact fraction `num / 10^scale` so `0.1`, `100m` and `1e-1`
/// compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    /// Value scaled up by 10^9 (nano units); enough for CPU and memory without floats.
    nanos: i128,
}

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(QuantityError);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, frac) = match digits.split_once('.') {
        Some((w, f)) => (w, f),
        None => (digits, ""),
    };
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(QuantityError);
    }
    // Numerator in nano units before the suffix is applied.
    let mut nanos: i128 = 0;
    for b in whole.bytes() {
        nanos = nanos.checked_mul(10).ok_or(QuantityError)? + i128::from(b - b'0');
    }
    nanos = nanos.checked_mul(1_000_000_000).ok_or(QuantityError)?;
    let mut place: i128 = 100_000_000;
    for b in frac.bytes() {
        nanos += i128::from(b - b'0') * place;
        place /= 10;
    }
    let apply_pow10 = |n: i128, exp: i32| -> Result<i128, QuantityError> {
        if exp >= 0 {
            n.checked_mul(10i128.checked_pow(exp as u32).ok_or(QuantityError)?)
                .ok_or(QuantityError)
        } else {
            Ok(n / 10i128.checked_pow((-exp) as u32).ok_or(QuantityError)?)
        }
    };
    let binary = |n: i128, exp: u32| n.checked_mul(1i128 << exp).ok_or(QuantityError);
    nanos = match suffix {
        "" => nanos,
        "n" => apply_pow10(nanos, -9)?,
        "u" => apply_pow10(nanos, -6)?,
        "m" => apply_pow10(nanos, -3)?,
        "k" => apply_pow10(nanos, 3)?,
        "M" => apply_pow10(nanos, 6)?,
        "G" => apply_pow10(nanos, 9)?,
        "T" => apply_pow10(nanos, 12)?,
        "P" => apply_pow10(nanos, 15)?,
        "E" => apply_pow10(nanos, 18)?,
        "Ki" => binary(nanos, 10)?,
        "Mi" => binary(nanos, 20)?,
        "Gi" => binary(nanos, 30)?,
        "Ti" => binary(nanos, 40)?,
        "Pi" => binary(nanos, 50)?,
        "Ei" => binary(nanos, 60)?,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| QuantityError)?;
            apply_pow10(nanos, e)?
        }
        _ => return Err(QuantityError),
    };
    Ok(Parsed {
        nanos: if negative { -nanos } else { nanos },
    })
}

/// Checks that `s` is a valid quantity.
pub fn validate(s: &str) -> Result<(), QuantityError> {
    parse(s).map(|_| ())
}

/// The quantity in thousandths, rounded up (CPU: `250m` → 250, `1` → 1000).
pub fn milli_value(q: &Quantity) -> Result<i64, QuantityError> {
    let n = parse(&q.0)?.nanos;
    let milli = n.div_euclid(1_000_000) + i128::from(n.rem_euclid(1_000_000) != 0);
    i64::try_from(milli).map_err(|_| QuantityError)
}

/// The quantity in whole units, rounded up (memory: `128Mi` → 134217728).
pub fn value(q: &Quantity) -> Result<i64, QuantityError> {
    let n = parse(&q.0)?.nanos;
    let whole = n.div_euclid(1_000_000_000) + i128::from(n.rem_euclid(1_000_000_000) != 0);
    i64::try_from(whole).map_err(|_| QuantityError)
}

/// CPU millicores as a quantity string, in the shortest form upstream prints (`2`, `250m`).
pub fn from_milli(milli: i64) -> Quantity {
    if milli % 1000 == 0 {
        Quantity((milli / 1000).to_string())
    } else {
        Quantity(format!("{milli}m"))
    }
}

/// Bytes as a quantity string, using the largest binary suffix that divides evenly (`2Gi`).
pub fn from_bytes(bytes: i64) -> Quantity {
    for (suffix, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        let unit = 1i64 << shift;
        if bytes != 0 && bytes % unit == 0 {
            return Quantity(format!("{}{suffix}", bytes / unit));
        }
    }
    Quantity(bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_in_millicores() {
        for (s, m) in [
            ("250m", 250),
            ("1", 1000),
            ("0.5", 500),
            ("1.5", 1500),
            ("100u", 1),
            ("2k", 2_000_000),
            ("1e-1", 100),
        ] {
            assert_eq!(milli_value(&q(s)), Ok(m), "{s}");
        }
    }

    #[test]
    fn memory_in_bytes() {
        for (s, b) in [
            ("128Mi", 134_217_728),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1k", 1000),
            ("1.5Ki", 1536),
            ("100m", 1),
            ("3e2", 300),
        ] {
            assert_eq!(value(&q(s)), Ok(b), "{s}");
        }
    }

    #[test]
    fn bad_quantities_are_errors() {
        for s in [
            "",
            "abc",
            "1x",
            "--1",
            "1..2",
            ".",
            "1Mii",
            "1e",
            "99999999999999999999999999999999Ei",
        ] {
            assert_eq!(validate(s), Err(QuantityError), "{s:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        assert_eq!(from_milli(2000).0, "2");
        assert_eq!(from_milli(250).0, "250m");
        assert_eq!(from_bytes(2 << 30).0, "2Gi");
        assert_eq!(from_bytes(1000).0, "1000");
        assert_eq!(value(&from_bytes(123_456_789)), Ok(123_456_789));
    }
}
