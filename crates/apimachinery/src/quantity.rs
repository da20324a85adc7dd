//! Kubernetes quantities (`500m`, `2`, `64Mi`, `1e3`) as exact integers of
//! milli-units, which is what upstream's `MilliValue` computes and what sums of
//! requests, quotas and autoscaling targets need (no float drift).

/// `500m` → 500, `2` → 2000, `64Mi` → 67108864000, `123456u` → 124 (rounded up, as upstream's
/// MilliValue); signs and exponents (`1e3`) too.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // (multiplier, power of ten) of the suffix.
    let (mult, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s if s.starts_with(['e', 'E']) => (1, s[1..].parse().ok()?),
        _ => return None,
    };
    let digits = format!("{int_part}{frac_part}");
    let value: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    // Checked throughout: the exponent and the digits come from the request, and an
    // overflow must be a parse error, not a panic (or a wrapped, wrong value).
    let scale = exp10
        .checked_add(3)?
        .checked_sub(i32::try_from(frac_part.len()).ok()?)?;
    let scaled = value.checked_mul(mult)?;
    let pow = 10i128.checked_pow(scale.unsigned_abs());
    let out = if scale >= 0 {
        scaled.checked_mul(pow?)?
    } else {
        match pow {
            // Rounded up; `scaled` is never negative (the sign is applied below).
            Some(div) => scaled / div + i128::from(scaled % div != 0),
            // More than 38 places below the unit: any digit rounds up to one milli-unit.
            None => i128::from(scaled != 0),
        }
    };
    Some(if negative { -out } else { out })
}

/// A milli-value as upstream's canonical decimal quantity: `250m`, `2`, `1500m`, `9764k`.
pub fn format_decimal(milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut n = milli / 1000;
    if n == 0 {
        return "0".to_string();
    }
    let mut unit = "";
    for suffix in ["k", "M", "G", "T", "P", "E"] {
        if n % 1000 != 0 {
            break;
        }
        n /= 1000;
        unit = suffix;
    }
    // Past `E` the number keeps its trailing zeros (`1000E`), as upstream's largest
    // suffix does.
    format!("{n}{unit}")
}

/// CPU as millicores: `500m` → 500, `2` → 2000, `0.25` → 250.
pub fn cpu_millis(text: &str) -> Option<i64> {
    parse_milli(text).and_then(|m| i64::try_from(m).ok())
}

/// A quantity in whole units, rounded up as upstream's `Value`: `128Mi`, `1G`, `1.5Gi`
/// → bytes.
pub fn whole_units(text: &str) -> Option<i64> {
    let milli = parse_milli(text)?;
    // Rounded up without `milli + 999`, which overflows for the largest values.
    let units = milli.div_euclid(1000) + i128::from(milli.rem_euclid(1000) != 0);
    i64::try_from(units).ok()
}

/// A non-negative quantity as a plain number of its unit (cores, bytes), for sizes
/// that are only shown or compared: `500m` → 0.5, `4Gi` → 4294967296.
pub fn as_f64(text: &str) -> Option<f64> {
    parse_milli(text)
        .filter(|m| *m >= 0)
        .map(|m| m as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_values() {
        assert_eq!(parse_milli("1.5Gi"), Some(1610612736000));
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("1Ki"), Some(1024 * 1000));
        assert_eq!(parse_milli("1Gi"), Some((1i128 << 30) * 1000));
        assert_eq!(parse_milli("1k"), Some(1_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("0.5m"), Some(1));
        assert_eq!(parse_milli("123456u"), Some(124));
        assert_eq!(parse_milli("123456n"), Some(1));
        assert_eq!(parse_milli("-2"), Some(-2000));
        assert_eq!(parse_milli("x"), None);
        assert_eq!(parse_milli("1Zi"), None);
        assert_eq!(parse_milli("."), None);
    }

    #[test]
    fn cpu_and_bytes() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("0.25"), Some(250));
        assert_eq!(whole_units("128Mi"), Some(128 << 20));
        assert_eq!(whole_units("1G"), Some(1_000_000_000));
        assert_eq!(whole_units("1000"), Some(1000));
        assert_eq!(whole_units("1.5Gi"), Some(3 << 29));
        assert_eq!(whole_units("x"), None);
    }

    #[test]
    fn plain_numbers() {
        assert_eq!(as_f64("500m"), Some(0.5));
        assert_eq!(as_f64("2"), Some(2.0));
        assert_eq!(as_f64("4Gi"), Some(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(as_f64("1.5"), Some(1.5));
        assert_eq!(as_f64("four"), None);
        assert_eq!(as_f64("4Qi"), None);
        assert_eq!(as_f64("-1"), None);
    }

    #[test]
    fn parses_quantities_to_milli_units() {
        assert_eq!(parse_milli("500m"), Some(500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("123456n"), Some(1));
        assert_eq!(parse_milli("123456789n"), Some(124));
        assert_eq!(parse_milli("12Ki"), Some(12 * 1024 * 1000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_milli("x"), None);
        assert_eq!(parse_milli(""), None);
    }

    /// Inputs the fuzz target `quantity` found panicking (overflow) or formatted wrongly.
    #[test]
    fn extreme_values_are_errors_or_round_trip() {
        // The exponent plus the milli-unit shift overflowed i32.
        assert_eq!(parse_milli("3e2147483647"), None);
        assert_eq!(parse_milli("1e-2147483648"), Some(1));
        assert_eq!(parse_milli("0e-2147483648"), Some(0));
        // Rounding up added to a value already at the top of i128.
        assert_eq!(
            parse_milli(".170141183460469231731687303715884105727"),
            Some(171)
        );
        assert_eq!(
            parse_milli("170141183460469231731687303715884105727m"),
            Some(i128::MAX)
        );
        assert_eq!(
            whole_units("170141183460469231731687303715884105727m"),
            None
        );
        assert_eq!(whole_units("-1500m"), Some(-1));
        // Values of more than 1000E lost their last thousands.
        assert_eq!(format_decimal(10i128.pow(36)), "1000000000000000E");
        assert_eq!(format_decimal(5 * 10i128.pow(24)), "5000E");
        for milli in [
            10i128.pow(36),
            5 * 10i128.pow(24),
            -(10i128.pow(30)),
            i128::MAX,
        ] {
            assert_eq!(parse_milli(&format_decimal(milli)), Some(milli), "{milli}");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_decimal(250), "250m");
        assert_eq!(format_decimal(2000), "2");
        assert_eq!(format_decimal(1500), "1500m");
        assert_eq!(format_decimal(9_764_000_000), "9764k");
        assert_eq!(format_decimal(0), "0");
        assert_eq!(format_decimal(5_000_000_000), "5M");
        assert_eq!(format_decimal(12_345_000), "12345");
    }
}

/// Property tests: the canonical form round-trips, the suffixes agree with each other,
/// and no input makes the parser panic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const DECIMAL: [(&str, i32); 10] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Every milli-value parse can return: the sign is applied to a magnitude, so
    /// `i128::MIN` (whose magnitude is not an i128) is outside.
    fn milli() -> impl Strategy<Value = i128> {
        prop_oneof![
            -i128::MAX..=i128::MAX,
            -10_000_000i128..10_000_000,
            // Multiples of powers of ten, where the suffixes k..E are chosen.
            (-1_000_000i128..1_000_000, 0u32..=31).prop_map(|(n, p)| n * 10i128.pow(p)),
            Just(i128::MAX),
            Just(-i128::MAX),
            Just(0),
        ]
    }

    /// A quantity string as a user writes one: a sign, digits with an optional
    /// fraction, and any suffix upstream allows (decimal, binary or an exponent).
    fn quantity() -> impl Strategy<Value = String> {
        let suffix = prop_oneof![
            proptest::sample::select(DECIMAL.map(|(s, _)| s.to_string()).to_vec()),
            proptest::sample::select(BINARY.map(|(s, _)| s.to_string()).to_vec()),
            (prop_oneof![Just("e"), Just("E")], -40i32..40).prop_map(|(e, n)| format!("{e}{n}")),
        ];
        (
            prop_oneof![Just(""), Just("-"), Just("+")],
            "[0-9]{0,20}",
            proptest::option::of("[0-9]{0,12}"),
            suffix,
        )
            .prop_filter_map("a number needs a digit", |(sign, int, frac, suffix)| {
                let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
                (int.len() + frac.len() > 1 || !int.is_empty())
                    .then(|| format!("{sign}{int}{frac}{suffix}"))
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn canonical_form_parses_back(m in milli()) {
            let text = format_decimal(m);
            prop_assert_eq!(parse_milli(&text), Some(m), "{} formats as {}", m, text);
        }

        /// Parsing, formatting and parsing again keeps the value, and the canonical
        /// form is a fixed point of the round trip.
        #[test]
        fn parsed_quantities_reach_a_canonical_fixed_point(text in quantity()) {
            if let Some(value) = parse_milli(&text) {
                let canonical = format_decimal(value);
                let again = parse_milli(&canonical);
                prop_assert_eq!(again, Some(value), "{} -> {} -> {}", text, value, canonical);
                prop_assert_eq!(format_decimal(value), canonical);
            }
        }

        /// A decimal suffix means its power of ten: `7k` = `7e3` = `7000`, `7m` =
        /// `7e-3`; and a binary suffix multiplies the plain number by its power of two.
        #[test]
        fn suffixes_agree_with_exponents_and_powers(
            negative in any::<bool>(),
            digits in "[0-9]{1,18}",
            decimal in proptest::sample::select(DECIMAL.to_vec()),
            binary in proptest::sample::select(BINARY.to_vec()),
        ) {
            let sign = if negative { "-" } else { "" };
            let with_suffix = parse_milli(&format!("{sign}{digits}{}", decimal.0));
            let with_exponent = parse_milli(&format!("{sign}{digits}e{}", decimal.1));
            prop_assert_eq!(with_suffix, with_exponent);
            let n: i128 = digits.parse().unwrap();
            let n = if negative { -n } else { n };
            // Whole milli-units: exact, else the magnitude rounds up.
            let scale = decimal.1 + 3;
            // Past the range of i128 the parser must refuse the number.
            let expected = if scale >= 0 {
                n.checked_mul(10i128.pow(scale as u32))
            } else {
                let div = 10i128.pow(scale.unsigned_abs());
                let magnitude = n.abs() / div + i128::from(n.abs() % div != 0);
                Some(if negative { -magnitude } else { magnitude })
            };
            prop_assert_eq!(with_suffix, expected);
            let binary_value = parse_milli(&format!("{sign}{digits}{}", binary.0));
            prop_assert_eq!(binary_value, n.checked_mul(1000 << binary.1));
        }

        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = parse_milli(&text);
            let _ = whole_units(&text);
            let _ = cpu_millis(&text);
            let _ = as_f64(&text);
        }

        /// Strings of the quantity alphabet reach far more of the parser than any
        /// string does.
        #[test]
        fn parse_never_panics_on_quantity_like_text(text in "[-+0-9.eEnumkMGTPKi ]{0,48}") {
            if let Some(value) = parse_milli(&text) {
                prop_assert_eq!(parse_milli(&format_decimal(value)), Some(value));
            }
            let _ = whole_units(&text);
        }
    }
}
