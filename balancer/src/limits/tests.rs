//! The connection counts: the global cap waits, the per-IP cap refuses,
//! and every slot gives back what it took.

use std::time::Duration;

use super::*;

fn limits(max: u32, per_ip: u32) -> Limits {
    Limits {
        max_connections: max,
        max_connections_per_ip: per_ip,
        ..Limits::default()
    }
}

fn peer(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn at_max_connections_the_listener_waits_for_a_close() {
    let l = Arc::new(Limiter::new(&limits(2, 0)));
    let a = l.reserve().await;
    let b = l.reserve().await;
    assert_eq!(l.open(), 2);
    let third = tokio::spawn({
        let l = Arc::clone(&l);
        async move { l.reserve().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "a third slot at a cap of 2");
    assert_eq!(l.rejected.conns.load(Relaxed), 1);
    drop(a);
    let c = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("a close makes room")
        .unwrap();
    assert_eq!(l.open(), 2);
    drop((b, c));
    assert_eq!(l.open(), 0);
}

#[tokio::test]
async fn a_raised_cap_on_reload_lets_a_waiting_listener_go_on() {
    let l = Arc::new(Limiter::new(&limits(1, 0)));
    let _a = l.reserve().await;
    let waiting = tokio::spawn({
        let l = Arc::clone(&l);
        async move { l.reserve().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    l.configure(&limits(0, 0));
    let _b = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("no cap any more")
        .unwrap();
}

#[tokio::test]
async fn max_connections_per_ip_refuses_the_next_one_from_that_address_only() {
    let l = Arc::new(Limiter::new(&limits(0, 2)));
    let a = l.reserve().await.admit(peer("10.0.0.1:1000")).unwrap();
    let _b = l.reserve().await.admit(peer("10.0.0.1:1001")).unwrap();
    assert!(l.reserve().await.admit(peer("10.0.0.1:1002")).is_none());
    assert_eq!(l.rejected.conns_per_ip.load(Relaxed), 1);
    // The refused one gave its global slot back.
    assert_eq!(l.open(), 2);
    let _c = l.reserve().await.admit(peer("10.0.0.2:1000")).unwrap();
    // IPv4-mapped IPv6 is the same client.
    assert!(l
        .reserve()
        .await
        .admit(peer("[::ffff:10.0.0.1]:1003"))
        .is_none());
    drop(a);
    let _d = l.reserve().await.admit(peer("10.0.0.1:1004")).unwrap();
    assert_eq!(l.per_ip.count(ip_key("10.0.0.1".parse().unwrap())), 2);
}

#[tokio::test]
async fn slots_counted_before_a_reload_are_released_after_it() {
    let l = Arc::new(Limiter::new(&limits(0, 1)));
    let a = l.reserve().await.admit(peer("10.0.0.1:1")).unwrap();
    l.configure(&limits(0, 0));
    let b = l.reserve().await.admit(peer("10.0.0.1:2")).unwrap();
    drop((a, b));
    let key = ip_key("10.0.0.1".parse().unwrap());
    assert_eq!(l.per_ip.count(key), 0);
    assert_eq!(l.open(), 0);
    // An upgraded connection is held whatever the caps say.
    l.configure(&limits(1, 1));
    let _x = l.reserve().await.admit(peer("10.0.0.1:3")).unwrap();
    let held = l.hold(peer("10.0.0.1:3"));
    assert_eq!((l.open(), l.per_ip.count(key)), (2, 2));
    drop(held);
    assert_eq!((l.open(), l.per_ip.count(key)), (1, 1));
}

#[test]
fn ipv6_clients_count_by_their_64_prefix() {
    let key = |s: &str| ip_key(s.parse().unwrap());
    assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    assert_ne!(key("::1"), 0);
    assert_ne!(key("0.0.0.0"), 0);
}
