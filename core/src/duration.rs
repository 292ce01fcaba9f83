//! Durations as people write them in specs: a sequence of `<number><unit>` with units d, h, m, s
//! (`7d`, `36h`, `1d12h`). The CRD's CEL rule accepts exactly this grammar.

/// Seconds in `text`, or `None` when it is not a duration of this grammar (or overflows).
pub fn parse_secs(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(number.unwrap_or(0).checked_mul(10)?.checked_add(u64::from(d))?);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    // A trailing bare number has no unit.
    if number.is_some() { None } else { Some(total) }
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn parses_what_the_crd_rule_accepts() {
        assert_eq!(parse_secs("7d"), Some(604_800));
        assert_eq!(parse_secs("1d12h"), Some(129_600));
        assert_eq!(parse_secs("90m"), Some(5_400));
        assert_eq!(parse_secs("0s"), Some(0));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "7", "d", "7w", "1.5h", "a week", "99999999999999999999d"] {
            assert_eq!(parse_secs(bad), None, "{bad}");
        }
    }
}
