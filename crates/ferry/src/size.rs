//! Sizes, rates and ages on the command line: `4096`, `64K`, `1.5M`,
//! `2GiB`, `10M/s`, `90s`, `24h`.

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a size: use e.g. 4096, 64K, 1.5M, 2G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M, G or T")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// An age: a whole number with a unit s, m, h, d or w (`0` alone means none).
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not an age: use e.g. 90s, 30m, 24h, 7d, 2w"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: give a unit, s, m, h, d or w (as in 24h)")),
    };
    n.checked_mul(secs).map(std::time::Duration::from_secs).ok_or_else(|| format!("{s:?} is out of range"))
}

/// `--min-age`/`--max-age`: an age before now (`7d`), or a date, read in
/// the local time zone unless it says otherwise (`2026-01-31`,
/// `2026-01-31 12:00:00`, `2026-01-31T12:00:00+01:00`).
pub fn parse_time_bound(s: &str) -> Result<ferry_engine::TimeBound, String> {
    use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone};
    let t = s.trim();
    let at: DateTime<Local> = if t.starts_with(|c: char| c.is_ascii_digit()) && !t.contains('-') {
        let age = parse_age(t)?;
        let age = chrono::Duration::from_std(age).map_err(|_| format!("{s:?} is out of range"))?;
        Local::now().checked_sub_signed(age).ok_or_else(|| format!("{s:?} is out of range"))?
    } else if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        d.with_timezone(&Local)
    } else {
        let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
            .or_else(|| NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
            .ok_or_else(|| {
                format!(
                    "{s:?} is neither an age (90s, 30m, 24h, 7d, 2w) nor a date \
                     (2026-01-31, 2026-01-31 12:00:00, 2026-01-31T12:00:00Z)"
                )
            })?;
        Local
            .from_local_datetime(&naive)
            .earliest()
            .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))?
    };
    let ns = at.timestamp_nanos_opt().ok_or_else(|| format!("{s:?} is out of range"))?;
    Ok(ferry_engine::TimeBound { ns, text: t.to_string() })
}

pub fn parse_rate(s: &str) -> Result<u64, String> {
    let v = parse_size(s.trim().trim_end_matches("/s"))?;
    if v == 0 {
        return Err("--bwlimit must be above zero".into());
    }
    Ok(v)
}

/// `1.5 MiB` style.
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1.5M"), Ok(1_572_864));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_rate("10M/s"), Ok(10 << 20));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn ages() {
        use std::time::Duration;
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_age("24").unwrap_err().contains("unit"));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_age("1y").unwrap_err().contains("unit"));
        assert!(parse_age("h").is_err());
        assert!(parse_age("99999999999999999d").is_err());
        assert_eq!(human(1536.0), "1.5 KiB");
    }

    #[test]
    fn time_bounds() {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        let day = parse_time_bound("1d").unwrap();
        assert!((now - 86_400_000_000_000 - day.ns).abs() < 60_000_000_000, "{day:?}");
        assert_eq!(day.text, "1d");
        let utc = parse_time_bound("2026-01-31T12:00:00Z").unwrap();
        assert_eq!(utc.ns, 1_769_860_800_000_000_000);
        assert_eq!(parse_time_bound("2026-01-31T13:00:00+01:00").unwrap().ns, utc.ns);
        // Dates without a zone are local: they differ from UTC by the local offset.
        let local = parse_time_bound("2026-01-31 12:00:00").unwrap().ns;
        let offset = chrono::Local.timestamp_nanos(utc.ns).offset().local_minus_utc() as i64;
        assert_eq!(local, utc.ns - offset * 1_000_000_000);
        assert_eq!(parse_time_bound("2026-01-31T12:00:00").unwrap().ns, local);
        assert_eq!(parse_time_bound("2026-01-31").unwrap().ns, local - 12 * 3_600_000_000_000);
        for bad in ["yesterday", "2026-13-01", "7", "7y", "2026-01-31 25:00:00"] {
            let e = parse_time_bound(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
