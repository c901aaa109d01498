use http::HeaderValue;

use super::accepts_openmetrics;

#[test]
fn openmetrics_only_for_clients_that_accept_it() {
    // (Accept, OpenMetrics served)
    let table = [
        // Prometheus 2.x and 3.x defaults.
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            true,
        ),
        ("Application/OpenMetrics-Text", true),
        ("text/plain, application/openmetrics-text; q=0.1", true),
        // Refused, or not asked for.
        ("application/openmetrics-text; q=0", false),
        ("application/openmetrics-text;q=0.0", false),
        ("text/plain;version=0.0.4;q=0.3,*/*;q=0.2", false),
        ("*/*", false),
        ("text/html", false),
        ("", false),
    ];
    for (accept, open) in table {
        let v = HeaderValue::from_str(accept).unwrap();
        assert_eq!(accepts_openmetrics(&v), open, "{accept}");
    }
    assert!(!accepts_openmetrics(
        &HeaderValue::from_bytes(b"\xff").unwrap()
    ));
}
