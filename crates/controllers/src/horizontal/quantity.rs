//! Kubernetes quantities as milli-units (upstream's `MilliValue`, rounded up), which is
//! what the HPA's arithmetic and ResourceQuota's sums work in.

pub use korvet_apimachinery::quantity::parse_milli;

/// A milli-value as upstream's canonical decimal quantity: `250m`, `2`, `1500m`, `9764k`.
pub fn format_milli(milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut n = milli / 1000;
    if n == 0 {
        return "0".to_string();
    }
    for suffix in ["k", "M", "G", "T", "P", "E"] {
        if n % 1000 != 0 {
            break;
        }
        n /= 1000;
        if n % 1000 != 0 {
            return format!("{n}{suffix}");
        }
    }
    let mut out = n.to_string();
    // Only reached for values with no exact larger suffix.
    if out.is_empty() {
        out.push('0');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn formats_canonically() {
        assert_eq!(format_milli(250), "250m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(1500), "1500m");
        assert_eq!(format_milli(9_764_000_000), "9764k");
        assert_eq!(format_milli(0), "0");
        assert_eq!(format_milli(5_000_000_000), "5M");
        assert_eq!(format_milli(12_345_000), "12345");
    }
}
