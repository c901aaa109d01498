use std::sync::Arc;
use std::task::{Wake, Waker};

use super::*;
use crate::limits::Rejected;

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// A body being polled: feeds `Pace` what the client's body would yield.
struct Feed {
    pace: Pace,
    wait: ClientWait,
    rejected: Rejected,
    waker: Waker,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

impl Feed {
    fn new(max: u64, stall_secs: u64) -> Feed {
        Feed {
            pace: Pace::new(BodyLimits {
                max,
                stall: Duration::from_secs(stall_secs),
            }),
            wait: ClientWait::default(),
            rejected: Rejected::default(),
            waker: Waker::from(Arc::new(Noop)),
        }
    }

    fn poll(&mut self, p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>) -> Polled {
        let mut cx = Context::from_waker(&self.waker);
        self.pace.check(p, &mut cx, &self.wait, &self.rejected)
    }

    fn nothing(&mut self) -> Polled {
        self.poll(Poll::Pending)
    }

    fn bytes(&mut self, n: usize) -> Polled {
        self.poll(Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            b'x';
            n
        ]))))))
    }
}

fn stalled(p: &Polled) -> bool {
    matches!(p, Poll::Ready(Some(Err(BodyError::Stalled { .. }))))
}

fn passed(p: &Polled) -> bool {
    matches!(p, Poll::Ready(Some(Ok(_))))
}

async fn sleep(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_is_stalled_after_client_body() {
    let mut f = Feed::new(0, 30);
    assert!(passed(&f.bytes(100)));
    assert!(f.nothing().is_pending());
    sleep(29).await;
    assert!(f.nothing().is_pending());
    sleep(2).await;
    assert!(stalled(&f.nothing()));
    assert_eq!(f.rejected.body_timeout.load(Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_trickle_of_a_byte_a_second_is_stalled_too() {
    let mut f = Feed::new(0, 30);
    let mut seconds = 0;
    let verdict = loop {
        assert!(f.nothing().is_pending());
        sleep(1).await;
        seconds += 1;
        let p = f.bytes(1);
        if !passed(&p) {
            break p;
        }
        assert!(seconds < 120, "a trickle lived {seconds} s");
    };
    assert!(stalled(&verdict), "{verdict:?}");
    assert!((30..=31).contains(&seconds), "{seconds} s");
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_body_is_not_stalled() {
    // 2 KiB every 10 s, for ten minutes.
    let mut f = Feed::new(0, 30);
    for _ in 0..60 {
        assert!(f.nothing().is_pending());
        sleep(10).await;
        assert!(passed(&f.bytes(2048)));
    }
}

#[tokio::test(start_paused = true)]
async fn time_the_backend_takes_to_ask_is_not_the_clients() {
    let mut f = Feed::new(0, 30);
    // The backend stops reading for five minutes: hyper does not poll.
    assert!(passed(&f.bytes(100)));
    sleep(300).await;
    // Asked again, the client is given its whole client_body.
    assert!(f.nothing().is_pending());
    sleep(29).await;
    assert!(f.nothing().is_pending());
    assert_eq!(f.wait.total(Instant::now()), Duration::from_secs(29));
    sleep(2).await;
    assert!(stalled(&f.nothing()));
}

#[tokio::test(start_paused = true)]
async fn a_body_past_max_request_body_is_too_large() {
    let mut f = Feed::new(1000, 30);
    assert!(passed(&f.bytes(600)));
    let p = f.bytes(600);
    assert!(
        matches!(p, Poll::Ready(Some(Err(BodyError::TooLarge { max: 1000 })))),
        "{p:?}"
    );
    assert_eq!(f.rejected.body.load(Relaxed), 1);
    // Exactly at the limit is fine.
    let mut f = Feed::new(1000, 30);
    assert!(passed(&f.bytes(1000)));
    assert!(matches!(f.poll(Poll::Ready(None)), Poll::Ready(None)));
}

#[tokio::test(start_paused = true)]
async fn the_request_timeout_leaves_out_the_clients_time() {
    let wait = ClientWait::default();
    // The client takes 5 s to send its body; the backend answers 1 s after.
    let exchange = async {
        wait.begin(Instant::now());
        sleep(5).await;
        wait.end(Duration::from_secs(5));
        sleep(1).await;
        "answer"
    };
    let r = within(Duration::from_secs(3), Some(&wait), exchange).await;
    assert_eq!(r.ok(), Some("answer"));
    // Without a body the limit is the limit.
    let r = within(Duration::from_secs(3), None, sleep(5)).await;
    assert!(r.is_err());
    // A backend slow on its own still times out.
    let wait = ClientWait::default();
    let r = within(Duration::from_secs(3), Some(&wait), sleep(5)).await;
    assert!(r.is_err());
}
