//! The worked example of `docs/calibration.md`.

use std::collections::BTreeMap;

use super::*;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn estimates() -> Vec<(OrgId, Tier, Decimal, Decimal, Option<String>)> {
    let org = |id: &str| OrgId::parse(id).unwrap();
    vec![
        (
            org("acme"),
            Tier::Starter,
            dec("900"),
            dec("100"),
            Some("svc-acme".into()),
        ),
        (
            org("globex"),
            Tier::Pro,
            dec("600"),
            dec("300"),
            Some("svc-globex".into()),
        ),
        (org("initech"), Tier::Free, dec("0.5"), dec("0.1"), None),
    ]
}

fn measured() -> Measured {
    Measured {
        vcpu_minutes: dec("90000"),
        gb_minutes: dec("30000"),
        by_service: BTreeMap::from([
            ("svc-acme".to_owned(), (dec("60000"), dec("20000"))),
            ("svc-globex".to_owned(), (dec("30000"), dec("10000"))),
        ]),
    }
}

fn run(measured: Option<&Measured>, manual: Option<&str>) -> Calibration {
    let config = CalibrationConfig::default();
    let estimates = estimates();
    calibrate(&CalibrationInput {
        period: &Period::parse("2026-11").unwrap(),
        config: &config,
        estimates: &estimates,
        measured,
        manual_bill: manual.map(dec),
        source: if manual.is_some() {
            "manual"
        } else {
            "railway_api"
        },
        error: None,
        now: UnixMillis(0),
    })
}

#[test]
fn the_worked_example_from_railways_measurements() {
    let c = run(Some(&measured()), None);
    // 90,000 vCPU-min × $0.000463 + 30,000 GB-min × $0.000231
    // = $41.67 + $6.93 = $48.60.
    assert_eq!(c.railway_bill, Some(dec("48.60")));
    assert_eq!(c.estimated_vcpu_hours, dec("1500.5"));
    // 48.60 / 1500.5
    assert_eq!(c.actual_rate, Some(dec("0.032389")));
    assert_eq!(c.default_rate, dec("0.02778"));
    // |0.0323892… − 0.02778| / 0.0323892… = 0.142307…
    assert_eq!(c.variance, Some(dec("0.142307")));
    assert!(!c.alert, "14% is within Q1's 20%");
    assert_eq!(c.suggestion, None);
    // Per org: globex (600 estimated, 500 measured) is furthest off.
    let orgs: Vec<(&str, Option<Decimal>)> = c
        .by_org
        .iter()
        .map(|o| (o.org.as_str(), o.variance))
        .collect();
    assert_eq!(
        orgs,
        [("globex", Some(dec("0.2"))), ("acme", Some(dec("0.1")))]
    );
    // Memory per org: acme 100 GB-h estimated, 20,000 GB-min = 333.33… GB-h
    // measured; globex 300 against 166.66….
    let memory: Vec<(&str, Decimal, Option<Decimal>)> = c
        .by_org
        .iter()
        .map(|o| (o.org.as_str(), o.measured_gb_hours, o.gb_variance))
        .collect();
    assert_eq!(
        memory,
        [
            ("globex", dec("166.666667"), Some(dec("0.8"))),
            ("acme", dec("333.333333"), Some(dec("0.7")))
        ]
    );
    assert_eq!(c.by_tier.len(), 3);
}

#[test]
fn a_manual_bill_above_the_threshold_alerts_and_suggests() {
    // 60.00 / 1500.5 = 0.039987; |0.039987 − 0.02778| / 0.039987 = 0.305269.
    let c = run(None, Some("60.00"));
    assert_eq!(c.actual_rate, Some(dec("0.039987")));
    assert_eq!(c.variance, Some(dec("0.305269")));
    assert!(c.alert);
    assert!(c
        .suggestion
        .as_deref()
        .is_some_and(|s| s.contains("1.439405")));
    assert!(
        c.by_org.is_empty(),
        "no measurements, no per-org comparison"
    );
}

#[test]
fn no_usage_or_no_bill_says_so_without_dividing_by_zero() {
    let config = CalibrationConfig::default();
    let c = calibrate(&CalibrationInput {
        period: &Period::parse("2026-11").unwrap(),
        config: &config,
        estimates: &[],
        measured: Some(&measured()),
        manual_bill: None,
        source: "railway_api",
        error: None,
        now: UnixMillis(0),
    });
    assert_eq!((c.actual_rate, c.variance, c.alert), (None, None, false));
    assert!(c
        .note
        .as_deref()
        .is_some_and(|n| n.contains("no estimated usage")));
    let zero = run(None, Some("0"));
    assert_eq!(zero.actual_rate, None);
    assert!(zero.note.as_deref().is_some_and(|n| n.contains("zero")));
    let none = run(None, None);
    assert!(none.note.as_deref().is_some_and(|n| n.contains("no bill")));
}
