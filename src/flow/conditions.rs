//! `split-based-on` operators (SPEC §3).
//!
//! String comparisons are case-insensitive, as in Studio. Comma lists are
//! trimmed. Numeric operators need both sides to parse as numbers, otherwise
//! they do not hold. Time and date operators test the input when it parses as
//! a time (`13:00`, `13:00:05`) or date (`2026-11-26`, `11/26/2026`), and
//! otherwise the execution's "now", in whatever offset the caller passed in
//! (UTC unless the deployment configures another).

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime};
use regex::RegexBuilder;

/// A split operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    EqualTo,
    NotEqualTo,
    MatchesAnyOf,
    DoesNotMatchAnyOf,
    IsBlank,
    IsNotBlank,
    Regex,
    Contains,
    DoesNotContain,
    StartsWith,
    DoesNotStartWith,
    LessThan,
    GreaterThan,
    IsBeforeTime,
    IsAfterTime,
    IsBeforeDate,
    IsAfterDate,
}

impl Operator {
    /// Parse Studio's operator name, `None` when unknown.
    pub fn parse(name: &str) -> Option<Operator> {
        use Operator::*;
        Some(match name {
            "equal_to" => EqualTo,
            "not_equal_to" => NotEqualTo,
            "matches_any_of" => MatchesAnyOf,
            "does_not_match_any_of" => DoesNotMatchAnyOf,
            "is_blank" => IsBlank,
            "is_not_blank" => IsNotBlank,
            "regex" => Regex,
            "contains" => Contains,
            "does_not_contain" => DoesNotContain,
            "starts_with" => StartsWith,
            "does_not_start_with" => DoesNotStartWith,
            "less_than" => LessThan,
            "greater_than" => GreaterThan,
            "is_before_time" => IsBeforeTime,
            "is_after_time" => IsAfterTime,
            "is_before_date" => IsBeforeDate,
            "is_after_date" => IsAfterDate,
            _ => return None,
        })
    }
}

/// Regexes written by flow authors are size-capped so one cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Whether `input <op> value` holds at time `now`.
pub fn evaluate(op: Operator, input: &str, value: &str, now: DateTime<FixedOffset>) -> bool {
    use Operator::*;
    let lower_in = input.to_lowercase();
    let lower_val = value.to_lowercase();
    let any_of = || {
        lower_val
            .split(',')
            .map(str::trim)
            .any(|item| item == lower_in)
    };
    match op {
        EqualTo => lower_in == lower_val,
        NotEqualTo => lower_in != lower_val,
        MatchesAnyOf => any_of(),
        DoesNotMatchAnyOf => !any_of(),
        IsBlank => input.trim().is_empty(),
        IsNotBlank => !input.trim().is_empty(),
        Regex => RegexBuilder::new(value)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|re| re.is_match(input))
            .unwrap_or(false),
        Contains => lower_in.contains(&lower_val),
        DoesNotContain => !lower_in.contains(&lower_val),
        StartsWith => lower_in.starts_with(&lower_val),
        DoesNotStartWith => !lower_in.starts_with(&lower_val),
        LessThan => numbers(input, value).is_some_and(|(a, b)| a < b),
        GreaterThan => numbers(input, value).is_some_and(|(a, b)| a > b),
        IsBeforeTime => times(input, value, now).is_some_and(|(a, b)| a < b),
        IsAfterTime => times(input, value, now).is_some_and(|(a, b)| a > b),
        IsBeforeDate => dates(input, value, now).is_some_and(|(a, b)| a < b),
        IsAfterDate => dates(input, value, now).is_some_and(|(a, b)| a > b),
    }
}

fn numbers(a: &str, b: &str) -> Option<(f64, f64)> {
    let a: f64 = a.trim().parse().ok()?;
    let b: f64 = b.trim().parse().ok()?;
    (a.is_finite() && b.is_finite()).then_some((a, b))
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .ok()
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%m/%d/%Y"))
        .ok()
        .or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|d| d.date_naive()))
}

fn times(input: &str, value: &str, now: DateTime<FixedOffset>) -> Option<(NaiveTime, NaiveTime)> {
    let subject = parse_time(input).unwrap_or_else(|| now.time());
    Some((subject, parse_time(value)?))
}

fn dates(input: &str, value: &str, now: DateTime<FixedOffset>) -> Option<(NaiveDate, NaiveDate)> {
    let subject = parse_date(input).unwrap_or_else(|| now.date_naive());
    Some((subject, parse_date(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-26T12:30:00+00:00").expect("fixed time")
    }

    #[test]
    fn operator_table() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("equal_to", "Yes", "yes", true),
            ("equal_to", "yes ", "yes", false),
            ("equal_to", "", "", true),
            ("not_equal_to", "YES", "yes", false),
            ("not_equal_to", "no", "yes", true),
            ("matches_any_of", "Two", "one, two ,three", true),
            ("matches_any_of", "four", "one, two ,three", false),
            ("does_not_match_any_of", "four", "one,two", true),
            ("does_not_match_any_of", "ONE", "one,two", false),
            ("is_blank", "  ", "", true),
            ("is_blank", "x", "", false),
            ("is_not_blank", "x", "", true),
            ("is_not_blank", "", "", false),
            ("regex", "order 12345", r"\d{5}", true),
            ("regex", "order 12", r"^\d+$", false),
            ("regex", "anything", "(unclosed", false),
            ("contains", "I want PIZZA now", "pizza", true),
            ("contains", "burger", "pizza", false),
            ("does_not_contain", "burger", "pizza", true),
            ("does_not_contain", "Pizza", "pizza", false),
            ("starts_with", "Hello there", "hello", true),
            ("starts_with", "oh hello", "hello", false),
            ("does_not_start_with", "oh hello", "hello", true),
            ("does_not_start_with", "HELLO", "hello", false),
            ("less_than", "9", "10", true),
            ("less_than", "10", "9", false),
            ("less_than", "abc", "9", false),
            ("greater_than", "10.5", "10", true),
            ("greater_than", " 3 ", "10", false),
            ("greater_than", "", "0", false),
            // Input that is not a time/date: "now" (12:30 on 2026-11-26) is tested.
            ("is_before_time", "", "13:00", true),
            ("is_before_time", "", "12:00", false),
            ("is_after_time", "", "12:00", true),
            ("is_after_time", "", "bogus", false),
            ("is_before_time", "08:15", "09:00", true),
            ("is_after_time", "23:59:59", "23:00", true),
            ("is_before_date", "", "2026-12-01", true),
            ("is_before_date", "", "2026-11-01", false),
            ("is_after_date", "", "11/01/2026", true),
            ("is_after_date", "2020-01-01", "2021-01-01", false),
            ("is_before_date", "2020-01-01", "2021-01-01", true),
        ];
        for (op, input, value, want) in cases {
            let parsed = Operator::parse(op).expect("known operator");
            assert_eq!(
                evaluate(parsed, input, value, now()),
                *want,
                "{op}({input:?}, {value:?})"
            );
        }
        assert_eq!(Operator::parse("is_purple"), None);
    }

    #[test]
    fn time_respects_caller_offset() {
        // 12:30 UTC is 14:30 at +02:00.
        let local = now().with_timezone(&FixedOffset::east_opt(7200).expect("offset"));
        assert!(evaluate(Operator::IsAfterTime, "", "14:00", local));
        assert!(!evaluate(Operator::IsAfterTime, "", "14:00", now()));
    }
}
