//! `Conn` against hostile servers: each test's server is a small async
//! function on a raw socket, so it can do what no well-behaved HTTP server
//! would (endless headers, endless bodies, lies about lengths, garbage).
//!
//! Every test runs twice (`against_both!`): on hyper's `Conn` and on the
//! pipelining reader `PipeConn`, one request at a time, which must keep the
//! same rules.
//!
//! What every test holds: the call returns (no hang) within a bound set by
//! the limits, with an error that says what happened, classified as
//! transient or not, and without buffering past a limit.

mod common;
use bulkget_http::{Endpoint, FetchError, Limits, MAX_RETRY_AFTER};
use common::HttpConn;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener whose every accepted connection runs `serve`; counts accepts.
struct Hostile {
    endpoint: Endpoint,
    accepted: Arc<AtomicUsize>,
}

async fn hostile<F, Fut>(serve: F) -> Hostile
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock));
        }
    });
    Hostile {
        endpoint: Endpoint::parse(&format!("http://{addr}")).unwrap(),
        accepted,
    }
}

/// Reads one request head, so the answer goes to an actual request.
async fn read_head(sock: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Writes `chunk` until the client goes away.
async fn forever(sock: &mut TcpStream, chunk: &[u8]) {
    while sock.write_all(chunk).await.is_ok() {}
}

fn limits(max_body: u64) -> Limits {
    Limits {
        first_byte: Duration::from_millis(500),
        idle: Duration::from_millis(500),
        max_body,
        max_redirects: 3,
        deadline: Duration::from_secs(60),
    }
}

async fn get_once<C: HttpConn>(
    h: &Hostile,
    limits: &Limits,
) -> (Result<u16, FetchError>, C, Vec<u8>) {
    let mut conn = C::connect(&h.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let r = conn
        .get(&h.endpoint, "/get/a", limits, &mut body)
        .await
        .map(|r| r.status);
    (r, conn, body)
}

async fn an_endless_chunked_body_is_cut_at_the_limit_and_never_buffered_past_it<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let mut chunk = b"2000\r\n".to_vec();
        chunk.extend_from_slice(&[b'x'; 0x2000]);
        chunk.extend_from_slice(b"\r\n");
        forever(&mut sock, &chunk).await;
    })
    .await;
    let started = Instant::now();
    let (r, conn, body) = get_once::<C>(&h, &limits(100_000)).await;
    let e = r.unwrap_err();
    assert_eq!(
        e,
        FetchError::TooLarge {
            limit: 100_000,
            declared: None
        }
    );
    assert!(!e.is_transient());
    assert_eq!(e.to_string(), "body is over the 100000-byte limit");
    assert!(body.len() <= 100_000, "{} bytes buffered", body.len());
    assert!(
        body.capacity() <= 256 << 10,
        "{} bytes reserved",
        body.capacity()
    );
    assert!(!conn.is_usable(), "an undrained body breaks the connection");
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn a_liar_without_any_body_is_refused_at_once_not_after_a_timeout<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n")
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let mut l = limits(1 << 20);
    l.idle = Duration::from_secs(30);
    let started = Instant::now();
    let (r, conn, body) = get_once::<C>(&h, &l).await;
    assert!(
        matches!(
            r,
            Err(FetchError::TooLarge {
                declared: Some(1_000_000_000_000),
                ..
            })
        ),
        "{r:?}"
    );
    assert!(body.is_empty());
    assert!(!conn.is_usable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn an_error_page_too_big_to_drain_keeps_its_status_and_drops_the_connection<C: HttpConn>() {
    // Declared: refused from the headers.
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-length: 100000000\r\n\r\n")
            .await;
        forever(&mut sock, &[b'e'; 8192]).await;
    })
    .await;
    let (r, conn, _) = get_once::<C>(&h, &limits(1000)).await;
    let e = r.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert!(!conn.is_usable());

    // Streamed without a length: cut after the error-body allowance.
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let mut chunk = b"1000\r\n".to_vec();
        chunk.extend_from_slice(&[b'e'; 0x1000]);
        chunk.extend_from_slice(b"\r\n");
        forever(&mut sock, &chunk).await;
    })
    .await;
    let started = Instant::now();
    let (r, conn, body) = get_once::<C>(&h, &limits(1000)).await;
    assert_eq!(r.unwrap_err().status(), Some(500));
    assert!(!conn.is_usable());
    assert!(
        body.len() <= 128 << 10,
        "{} bytes of error page kept",
        body.len()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn endless_headers_are_an_error_not_unbounded_memory<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\n").await;
        forever(
            &mut sock,
            b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        )
        .await;
    })
    .await;
    let mut l = limits(1000);
    l.first_byte = Duration::from_secs(10);
    let started = Instant::now();
    let (r, conn, _) = get_once::<C>(&h, &l).await;
    let e = r.unwrap_err();
    assert!(matches!(e, FetchError::Transport(_)), "{e:?}");
    assert!(!conn.is_usable());
    // hyper gives up at its header buffer limit, long before our timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn headers_trickled_a_byte_at_a_time_hit_the_first_byte_timeout<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        for b in b"HTTP/1.1 200 OK\r\nx-slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if sock.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let started = Instant::now();
    let (r, conn, _) = get_once::<C>(&h, &limits(1000)).await;
    let e = r.unwrap_err();
    assert_eq!(e, FetchError::Timeout("first-byte"));
    assert!(e.is_transient());
    assert!(!conn.is_usable());
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn garbage_instead_of_http_is_a_transient_transport_error<C: HttpConn>() {
    for reply in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"HTTP/1.1 999999 Weird\r\ncontent-length: 0\r\n\r\n",
        b"\x00\xff\xfe\r\n\r\n",
        b"",
    ] {
        let h = hostile(move |mut sock| async move {
            read_head(&mut sock).await;
            let _ = sock.write_all(reply).await;
            // Then hang up.
        })
        .await;
        let (r, conn, _) = get_once::<C>(&h, &limits(1000)).await;
        let e = r.expect_err(&String::from_utf8_lossy(reply));
        assert!(
            matches!(e, FetchError::Transport(_) | FetchError::ShortBody { .. }),
            "{reply:?}: {e:?}"
        );
        assert!(e.is_transient(), "{reply:?}: {e:?}");
        assert!(!conn.is_usable(), "{reply:?}");
    }
}

async fn a_body_until_close_without_a_length_is_accepted_within_the_limit<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil close").await;
    })
    .await;
    let (r, conn, body) = get_once::<C>(&h, &limits(1000)).await;
    assert_eq!(r.unwrap(), 200);
    assert_eq!(body, b"until close");
    assert!(
        !conn.is_usable(),
        "HTTP/1.0 without keep-alive is not reused"
    );
}

async fn an_interim_100_continue_is_skipped<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        read_head(&mut sock).await;
        let _ = sock
            .write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )
            .await;
        std::future::pending::<()>().await;
    })
    .await;
    let (r, conn, body) = get_once::<C>(&h, &limits(1000)).await;
    assert_eq!(r.unwrap(), 200);
    assert_eq!(body, b"ok");
    assert!(conn.is_usable());
}

async fn retry_after_as_a_date_or_absurdly_long_is_read_and_capped<C: HttpConn>() {
    let date = {
        // Ten seconds from now as an IMF-fixdate, computed independently of
        // the parser under test via the proleptic Gregorian calendar.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 10;
        imf_fixdate(now)
    };
    let replies: Vec<String> = vec![
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: {date}\r\ncontent-length: 0\r\n\r\n"
        ),
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: 31536000\r\ncontent-length: 0\r\n\r\n"
            .into(),
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: -5\r\ncontent-length: 0\r\n\r\n".into(),
    ];
    let replies = Arc::new(replies);
    let h = hostile(move |mut sock| {
        let replies = replies.clone();
        async move {
            for r in replies.iter() {
                if !read_head(&mut sock).await {
                    return;
                }
                let _ = sock.write_all(r.as_bytes()).await;
            }
        }
    })
    .await;
    let mut conn = C::connect(&h.endpoint, Duration::from_secs(1))
        .await
        .unwrap();
    let mut body = Vec::new();
    let l = limits(1000);
    let wait = conn
        .get(&h.endpoint, "/get/a", &l, &mut body)
        .await
        .unwrap_err();
    let wait = wait.retry_after().expect("a date is honoured");
    assert!(
        wait >= Duration::from_secs(8) && wait <= Duration::from_secs(10),
        "{wait:?} for {date}"
    );
    let e = conn
        .get(&h.endpoint, "/get/a", &l, &mut body)
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), Some(MAX_RETRY_AFTER));
    let e = conn
        .get(&h.endpoint, "/get/a", &l, &mut body)
        .await
        .unwrap_err();
    assert_eq!(e.retry_after(), None, "a negative Retry-After is ignored");
    assert!(e.is_transient());
    assert_eq!(h.accepted.load(Ordering::SeqCst), 1);
}

fn imf_fixdate(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut days = secs / 86_400;
    let weekday = DAYS[(days % 7) as usize];
    let mut year = 1970;
    loop {
        let len = if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) {
            366
        } else {
            365
        };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let lens = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while days >= lens[month] {
        days -= lens[month];
        month += 1;
    }
    let t = secs % 86_400;
    format!(
        "{weekday}, {:02} {} {year} {:02}:{:02}:{:02} GMT",
        days + 1,
        MONTHS[month],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

async fn redirects_off_host_are_refused_and_the_other_host_never_hears_from_us<C: HttpConn>() {
    // The "other host": same address, another port, so a different origin.
    let other = hostile(|_sock| async move {}).await;
    let other_authority = other.endpoint.authority.clone();
    let locations: Vec<String> = vec![
        format!("http://{other_authority}/get/a"),
        format!("//{other_authority}/get/a"),
        format!("https://{other_authority}/get/a"),
        "http://user@127.0.0.1/get/a".into(),
    ];
    for location in locations {
        let reply =
            format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
        let reply: &'static str = Box::leak(reply.into_boxed_str());
        let h = hostile(move |mut sock| async move {
            while read_head(&mut sock).await {
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        })
        .await;
        let (r, _, _) = get_once::<C>(&h, &limits(1000)).await;
        let e = r.unwrap_err();
        assert!(
            matches!(e, FetchError::OffHostRedirect(_)),
            "{location}: {e:?}"
        );
        assert!(!e.is_transient());
        assert!(e
            .to_string()
            .starts_with("redirect to another host refused"));
    }
    assert_eq!(other.accepted.load(Ordering::SeqCst), 0);
}

async fn a_same_host_redirect_loop_ends_after_the_redirect_limit<C: HttpConn>() {
    let h = hostile(|mut sock| async move {
        while read_head(&mut sock).await {
            let _ = sock
                .write_all(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /get/a\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    })
    .await;
    let (r, _, _) = get_once::<C>(&h, &limits(1000)).await;
    let e = r.unwrap_err();
    assert_eq!(e, FetchError::BadRedirect("more than 3 redirects".into()));
    assert!(!e.is_transient());
    assert_eq!(e.to_string(), "bad redirect: more than 3 redirects");
}

async fn a_server_that_hangs_up_at_once_is_transient<C: HttpConn>() {
    let h = hostile(|sock| async move { drop(sock) }).await;
    let (r, _, _) = get_once::<C>(&h, &limits(1000)).await;
    let e = r.unwrap_err();
    assert!(matches!(e, FetchError::Transport(_)), "{e:?}");
    assert!(e.is_transient());
}

against_both! {
    #[tokio::test]
    an_endless_chunked_body_is_cut_at_the_limit_and_never_buffered_past_it,
    #[tokio::test]
    a_liar_without_any_body_is_refused_at_once_not_after_a_timeout,
    #[tokio::test]
    an_error_page_too_big_to_drain_keeps_its_status_and_drops_the_connection,
    #[tokio::test]
    endless_headers_are_an_error_not_unbounded_memory,
    #[tokio::test]
    headers_trickled_a_byte_at_a_time_hit_the_first_byte_timeout,
    #[tokio::test]
    garbage_instead_of_http_is_a_transient_transport_error,
    #[tokio::test]
    a_body_until_close_without_a_length_is_accepted_within_the_limit,
    #[tokio::test]
    an_interim_100_continue_is_skipped,
    #[tokio::test]
    retry_after_as_a_date_or_absurdly_long_is_read_and_capped,
    #[tokio::test]
    redirects_off_host_are_refused_and_the_other_host_never_hears_from_us,
    #[tokio::test]
    a_same_host_redirect_loop_ends_after_the_redirect_limit,
    #[tokio::test]
    a_server_that_hangs_up_at_once_is_transient,
}
