//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1e3`, `2G`) read exactly, and
//! written back the way kubelet reports machine sizes (`<n>Ki`).
//!
//! A quantity is `<sign><digits>[.<digits>][<suffix>]` where the suffix is a binary SI one
//! (`Ki Mi Gi Ti Pi Ei`), a decimal SI one (`n u m k M G T P E`, none) or a decimal exponent
//! (`e3`, `E-2`). Values are kept as `mantissa * 2^(10*binary) * 10^exponent` so that
//! conversions to millicores and bytes round up exactly as Kubernetes' `MilliValue()` and
//! `Value()` do.
use std::fmt;

/// A parsed quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    /// The decimal digits without the point.
    mantissa: u128,
    /// Power of ten applied to the mantissa (the fraction's digits already subtracted).
    exponent: i32,
    /// Power of 1024 of a binary suffix.
    binary: u32,
}

/// A string that is not a Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

impl Quantity {
    /// Parses a quantity string.
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let bad = || QuantityError(text.to_string());
        let s = text.trim();
        let (negative, s) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let mut mantissa: u128 = 0;
        for digit in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or_else(bad)?;
        }
        let frac_digits = i32::try_from(frac_part.len()).map_err(|_| bad())?;
        let (exponent, binary) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 1),
            "Mi" => (0, 2),
            "Gi" => (0, 3),
            "Ti" => (0, 4),
            "Pi" => (0, 5),
            "Ei" => (0, 6),
            _ => {
                let exp = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(bad)?;
                let value: i32 = exp.parse().map_err(|_| bad())?;
                if !(-100..=100).contains(&value) {
                    return Err(bad());
                }
                (value, 0)
            }
        };
        Ok(Quantity {
            negative: negative && mantissa != 0,
            mantissa,
            exponent: exponent - frac_digits,
            binary,
        })
    }

    /// The value times `10^scale`, rounded up (towards positive infinity), saturating.
    fn scaled_ceil(&self, scale: i32) -> i128 {
        let mut numerator = self.mantissa;
        for _ in 0..self.binary {
            numerator = numerator.saturating_mul(1024);
        }
        let exp = self.exponent + scale;
        let magnitude: u128 = if exp >= 0 {
            let mut v = numerator;
            for _ in 0..exp {
                v = v.saturating_mul(10);
            }
            v
        } else {
            let mut divisor: u128 = 1;
            for _ in 0..(-exp) {
                divisor = divisor.saturating_mul(10);
                if divisor > numerator.saturating_mul(10) {
                    break;
                }
            }
            let q = numerator / divisor;
            let exact = q.saturating_mul(divisor) == numerator;
            // Positive values round up; negative ones round towards +inf, i.e. truncate.
            if !exact && !self.negative { q + 1 } else { q }
        };
        let magnitude = i128::try_from(magnitude).unwrap_or(i128::MAX);
        if self.negative { -magnitude } else { magnitude }
    }

    /// The value in thousandths, rounded up (Kubernetes' `MilliValue()`): millicores for CPU.
    pub fn millis(&self) -> i128 {
        self.scaled_ceil(3)
    }

    /// The value rounded up to a whole number (Kubernetes' `Value()`): bytes for memory.
    pub fn units(&self) -> i128 {
        self.scaled_ceil(0)
    }

    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// Millicores as an unsigned value for the runtime (negative values are `None`).
    pub fn millis_u64(&self) -> Option<u64> {
        u64::try_from(self.millis()).ok()
    }

    /// Whole units as an unsigned value for the runtime (negative values are `None`).
    pub fn units_u64(&self) -> Option<u64> {
        u64::try_from(self.units()).ok()
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.millis())
    }
}

/// Parses a k8s-openapi quantity.
pub fn parse(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
) -> Result<Quantity, QuantityError> {
    Quantity::parse(&q.0)
}

/// A byte count as kubelet writes machine sizes: whole KiB with the `Ki` suffix when it
/// divides evenly, else bytes.
pub fn bytes_quantity(bytes: u64) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    let text = if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    };
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn cpu_quantities_in_millicores() {
        assert_eq!(q("500m").millis(), 500);
        assert_eq!(q("1").millis(), 1000);
        assert_eq!(q("1.5").millis(), 1500);
        assert_eq!(q("0.1").millis(), 100);
        assert_eq!(q("2k").millis(), 2_000_000);
        // Below a millicore rounds up, as MilliValue() does.
        assert_eq!(q("100u").millis(), 1);
        assert_eq!(q("1n").millis(), 1);
        assert_eq!(q("0").millis(), 0);
        assert_eq!(q("1e-3").millis(), 1);
        assert_eq!(q("1.5e3").millis(), 1_500_000);
    }

    #[test]
    fn memory_quantities_in_bytes() {
        assert_eq!(q("128Mi").units(), 128 * 1024 * 1024);
        assert_eq!(q("1Gi").units(), 1 << 30);
        assert_eq!(q("1.5Gi").units(), 3 << 29);
        assert_eq!(q("1G").units(), 1_000_000_000);
        assert_eq!(q("64k").units(), 64_000);
        assert_eq!(q("12345").units(), 12345);
        assert_eq!(q("1E").units(), 1_000_000_000_000_000_000);
        assert_eq!(q("100m").units(), 1);
        assert_eq!(q("+5").units(), 5);
        assert_eq!(q("-5").units(), -5);
        assert_eq!(q("-1.5").units(), -1);
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "", "Mi", "1.2.3", "12x", "1 Gi", "1e", "e3", ".", "1e1000", "--1",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        assert_eq!(
            q("99999999999999999999999999999999999999").units(),
            99999999999999999999999999999999999999
        );
        assert_eq!(q("9999999999999999999999999Ei").units(), i128::MAX);
        assert!(Quantity::parse("9999999999999999999999999999999999999999999").is_err());
        assert_eq!(q("1Ei").units_u64(), Some(1 << 60));
        assert_eq!(q("-1").units_u64(), None);
    }

    #[test]
    fn machine_sizes_are_written_in_kibibytes() {
        assert_eq!(bytes_quantity(16 * 1024 * 1024).0, "16384Ki");
        assert_eq!(bytes_quantity(1000).0, "1000");
    }
}
