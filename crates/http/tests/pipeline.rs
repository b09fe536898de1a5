//! `PipeConn` with several requests in flight, against a scripted raw TCP
//! server: responses split anywhere, several in one read, servers that
//! close, stall or misframe in the middle of a pipeline.
//!
//! Tests whose scripts pause run on tokio's paused clock, so the pauses and
//! the client's deadlines are virtual time: the outcomes are exact and no
//! test waits in real time.

use bulkget_http::{Endpoint, FetchError, Limits, PipeConn, PipelineFault, Transport};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of what the scripted server does on its one connection.
#[derive(Clone)]
enum Step {
    /// Read this many request heads (recording their request lines).
    Heads(usize),
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long (virtual time in paused tests).
    Pause(Duration),
    /// Keep the connection open and say nothing more.
    Hang,
}

fn send(s: &str) -> Step {
    Step::Send(s.as_bytes().to_vec())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A server for one connection; closes it when the script ends.
struct Scripted {
    endpoint: Endpoint,
    /// The request lines read, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

async fn server(script: Vec<Step>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        for step in script {
            match step {
                Step::Heads(n) => {
                    for _ in 0..n {
                        match read_head(&mut sock, &mut buf).await {
                            Some(line) => seen.lock().unwrap().push(line),
                            None => return,
                        }
                    }
                }
                Step::Send(bytes) => {
                    if sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Hang => std::future::pending::<()>().await,
            }
        }
    });
    Scripted {
        endpoint: Endpoint::parse(&format!("http://{addr}")).unwrap(),
        requests,
    }
}

/// Reads one request head, keeping any bytes after it; its request line.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 4);
            return Some(head.lines().next().unwrap_or("").to_string());
        }
        let mut chunk = [0u8; 1024];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn limits() -> Limits {
    Limits {
        first_byte: ms(1000),
        idle: ms(1000),
        max_body: 1000,
        max_redirects: 3,
        deadline: ms(60_000),
    }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// What came back for one token.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Body(u32, String),
    Error(u32, FetchError),
}

struct Client {
    endpoint: Endpoint,
    conn: PipeConn,
    body: Vec<u8>,
}

impl Client {
    async fn start(s: &Scripted) -> Client {
        let conn = PipeConn::connect(&s.endpoint, &Transport::plain(ms(1000)))
            .await
            .unwrap();
        Client {
            endpoint: s.endpoint.clone(),
            conn,
            body: Vec::new(),
        }
    }

    /// Pushes `/get/f{t}` for each token.
    fn push(&mut self, tokens: std::ops::Range<u32>) {
        for t in tokens {
            self.conn.push(t, &format!("/get/f{t}")).unwrap();
        }
    }

    /// Reads answers until `next` has none; what each token got.
    async fn answers(&mut self, l: &Limits) -> Vec<Got> {
        let mut got = Vec::new();
        while let Some(a) = self.conn.next(&self.endpoint, l, &mut self.body).await {
            got.push(match a.result {
                Ok(r) => {
                    assert_eq!(r.status, 200);
                    Got::Body(a.token, String::from_utf8(self.body.clone()).unwrap())
                }
                Err(e) => Got::Error(a.token, e),
            });
            if !self.conn.is_usable() {
                break;
            }
        }
        got
    }

    fn unanswered(&mut self) -> Vec<u32> {
        let mut tokens = Vec::new();
        self.conn.take_unanswered(|t| tokens.push(t));
        tokens
    }
}

fn bodies(range: std::ops::Range<u32>) -> Vec<Got> {
    range.map(|t| Got::Body(t, format!("body-{t}"))).collect()
}

#[tokio::test]
async fn several_responses_in_one_read_answer_their_requests_in_order() {
    let all: String = (0..8).map(|t| ok(&format!("body-{t}"))).collect();
    let s = server(vec![Step::Heads(8), send(&all), Step::Hang]).await;
    let mut c = Client::start(&s).await;
    c.push(0..8);
    assert_eq!(c.conn.in_flight(), 8);
    let mut got = Vec::new();
    for _ in 0..8 {
        let a = c
            .conn
            .next(&c.endpoint, &limits(), &mut c.body)
            .await
            .unwrap();
        a.result.unwrap();
        got.push(Got::Body(
            a.token,
            String::from_utf8(c.body.clone()).unwrap(),
        ));
    }
    assert_eq!(got, bodies(0..8));
    assert!(c.conn.is_usable());
    assert_eq!(c.conn.in_flight(), 0);
    assert_eq!(c.conn.answered(), 8);
    assert_eq!(c.conn.fault(), None);
    let lines = s.requests.lock().unwrap().clone();
    let want: Vec<String> = (0..8).map(|t| format!("GET /get/f{t} HTTP/1.1")).collect();
    assert_eq!(lines, want, "written in the order pushed");
}

#[tokio::test(start_paused = true)]
async fn responses_split_at_every_byte_boundary_are_read_the_same() {
    // Three responses of each framing: a length, chunks with an extension
    // and a trailer, an interim 100 before a length, one after the other.
    let stream = [
        ok("body-0"),
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nbod\r\n3\r\ny-1\r\n0\r\nx-trailer: t\r\n\r\n"
            .to_string(),
        format!("HTTP/1.1 100 Continue\r\n\r\n{}", ok("body-2")),
    ]
    .concat();
    for cut in 1..stream.len() {
        let (a, b) = stream.as_bytes().split_at(cut);
        let s = server(vec![
            Step::Heads(3),
            Step::Send(a.to_vec()),
            Step::Pause(ms(10)),
            Step::Send(b.to_vec()),
            Step::Hang,
        ])
        .await;
        let mut c = Client::start(&s).await;
        c.push(0..3);
        let got = c.answers(&limits()).await;
        assert_eq!(got[..], bodies(0..3)[..], "cut at byte {cut}");
        assert!(c.conn.is_usable(), "cut at byte {cut}");
    }
}

#[tokio::test]
async fn a_server_that_closes_after_some_answers_leaves_the_rest_unanswered_for_a_retry() {
    let two: String = (0..2).map(|t| ok(&format!("body-{t}"))).collect();
    // Reads all six, answers two, hangs up.
    let s = server(vec![Step::Heads(6), send(&two)]).await;
    let mut c = Client::start(&s).await;
    c.push(0..6);
    let got = c.answers(&limits()).await;
    assert_eq!(got, bodies(0..2));
    assert!(!c.conn.is_usable());
    assert_eq!(c.unanswered(), vec![2, 3, 4, 5]);
    // Two answers on a connection six deep is far from a keep-alive limit:
    // this server does not pipeline usefully.
    assert_eq!(
        c.conn.fault(),
        Some(&PipelineFault::EarlyClose {
            answered: 2,
            waiting: 4
        })
    );
}

#[tokio::test]
async fn a_keep_alive_limit_far_above_the_depth_costs_only_the_unanswered() {
    // Depth 4: twenty requests answered four at a time, then the server's
    // keep-alive limit closes the connection with four more pipelined.
    let mut script = Vec::new();
    for round in 0..5u32 {
        script.push(Step::Heads(4));
        let answers: String = (round * 4..round * 4 + 4)
            .map(|t| ok(&format!("body-{t}")))
            .collect();
        script.push(send(&answers));
    }
    script.push(Step::Heads(4));
    let s = server(script).await;
    let mut c = Client::start(&s).await;
    c.push(0..4);
    let mut next = 4;
    let mut got = Vec::new();
    while let Some(a) = c.conn.next(&c.endpoint, &limits(), &mut c.body).await {
        a.result.unwrap();
        got.push(Got::Body(
            a.token,
            String::from_utf8(c.body.clone()).unwrap(),
        ));
        // Keep four in flight, as the engine does.
        c.conn.push(next, &format!("/get/f{next}")).unwrap();
        next += 1;
    }
    assert_eq!(got, bodies(0..20));
    assert_eq!(c.unanswered(), vec![20, 21, 22, 23]);
    assert_eq!(
        c.conn.fault(),
        None,
        "20 answers at depth 4 is a keep-alive limit"
    );
}

#[tokio::test]
async fn connection_close_on_a_pipelined_answer_ends_the_pipeline_and_says_so() {
    let s = server(vec![
        Step::Heads(4),
        send("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 6\r\n\r\nbody-0"),
        // What a server sends after saying close must not be taken as an
        // answer.
        send(&ok("body-1")),
        Step::Hang,
    ])
    .await;
    let mut c = Client::start(&s).await;
    c.push(0..4);
    let got = c.answers(&limits()).await;
    assert_eq!(got, bodies(0..1));
    assert!(!c.conn.is_usable());
    assert!(c
        .conn
        .next(&c.endpoint, &limits(), &mut c.body)
        .await
        .is_none());
    assert_eq!(c.unanswered(), vec![1, 2, 3]);
    assert_eq!(
        c.conn.fault(),
        Some(&PipelineFault::EarlyClose {
            answered: 1,
            waiting: 3
        })
    );
    assert!(matches!(
        c.conn.push(9, "/get/f9"),
        Err(FetchError::Transport(_))
    ));
}

/// Serves `first` then two good responses to three pipelined requests;
/// what the client got, what it left unanswered, and its fault.
async fn lie(first: &str) -> (Vec<Got>, Vec<u32>, Option<PipelineFault>) {
    let s = server(vec![
        Step::Heads(3),
        send(first),
        send(&ok("body-1")),
        send(&ok("body-2")),
        Step::Hang,
    ])
    .await;
    let mut c = Client::start(&s).await;
    c.push(0..3);
    let got = c.answers(&limits()).await;
    let unanswered = c.unanswered();
    (got, unanswered, c.conn.fault().cloned())
}

fn misframed_at_once(got: &[Got], unanswered: &[u32], fault: Option<PipelineFault>) {
    assert!(
        matches!(got, [Got::Error(0, FetchError::Transport(e))] if e.contains("length")),
        "{got:?}"
    );
    assert_eq!(unanswered, [1, 2]);
    assert!(
        matches!(fault, Some(PipelineFault::Misframed { answered: 0, .. })),
        "{fault:?}"
    );
}

#[tokio::test]
async fn an_understated_content_length_is_an_error_on_its_own_response() {
    // "body-0" declared as 4 bytes: "-0" is left where response 1 should
    // start, so response 0 is not delivered cut short.
    let (got, unanswered, fault) = lie("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody-0").await;
    misframed_at_once(&got, &unanswered, fault);
}

#[tokio::test]
async fn an_overstated_content_length_is_an_error_on_its_own_response() {
    // "body-0" declared as 8 bytes takes "HT" of response 1; what is left
    // ("TP/1.1 200 ...") is not a response.
    let (got, unanswered, fault) = lie("HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nbody-0").await;
    misframed_at_once(&got, &unanswered, fault);
}

#[tokio::test]
async fn a_length_that_swallows_the_next_response_whole_is_caught_too() {
    // Too long by exactly response 1: what follows is response 2, a valid
    // start, and only the status line inside the body gives the lie away.
    // Missed, every later answer would go to the request before its own.
    let swallowed = 6 + ok("body-1").len();
    let (got, unanswered, fault) = lie(&format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {swallowed}\r\n\r\nbody-0"
    ))
    .await;
    misframed_at_once(&got, &unanswered, fault);
}

#[tokio::test]
async fn a_body_holding_a_status_line_ends_pipelining_but_arrives_one_at_a_time() {
    // The price of the check above: a file that holds "HTTP/1." is taken
    // for a swallowed response while requests are pipelined behind it. One
    // request at a time it is just a file.
    let file = "GET / HTTP/1.1 logged";
    let reply = ok(file);
    let s = server(vec![
        Step::Heads(2),
        send(&reply),
        send(&ok("body-1")),
        Step::Heads(1),
        send(&reply),
        Step::Hang,
    ])
    .await;
    let mut c = Client::start(&s).await;
    c.push(0..2);
    let got = c.answers(&limits()).await;
    assert!(
        matches!(&got[..], [Got::Error(0, FetchError::Transport(_))]),
        "{got:?}"
    );
    assert_eq!(c.unanswered(), vec![1]);
    assert!(matches!(
        c.conn.fault(),
        Some(PipelineFault::Misframed { .. })
    ));
    // A server that pipelines correctly, on its next connection, at depth 1.
    let s = server(vec![Step::Heads(1), send(&reply), Step::Hang]).await;
    let mut c = Client::start(&s).await;
    let r = c
        .conn
        .get(&c.endpoint, "/get/f0", &limits(), &mut c.body)
        .await;
    assert_eq!(r.unwrap().status, 200);
    assert_eq!(c.body, file.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stalls_on_a_pipelined_request_times_out_and_says_so() {
    let s = server(vec![Step::Heads(3), send(&ok("body-0")), Step::Hang]).await;
    let mut c = Client::start(&s).await;
    c.push(0..3);
    let got = c.answers(&limits()).await;
    assert_eq!(
        got,
        vec![
            Got::Body(0, "body-0".into()),
            Got::Error(1, FetchError::Timeout("first-byte"))
        ]
    );
    assert_eq!(c.unanswered(), vec![2]);
    assert_eq!(c.conn.fault(), Some(&PipelineFault::Stall { answered: 1 }));
}

#[tokio::test]
async fn a_server_that_hangs_up_before_any_answer_charges_the_oldest_request_only() {
    let s = server(vec![Step::Heads(3)]).await;
    let mut c = Client::start(&s).await;
    c.push(0..3);
    let got = c.answers(&limits()).await;
    assert!(
        matches!(&got[..], [Got::Error(0, FetchError::Transport(_))]),
        "{got:?}"
    );
    assert_eq!(c.unanswered(), vec![1, 2]);
    assert_eq!(
        c.conn.fault(),
        None,
        "a connection that answered nothing says nothing about pipelining"
    );
}

#[tokio::test]
async fn statuses_and_redirects_inside_a_pipeline_keep_the_connection_and_the_tokens() {
    let s = server(vec![
        Step::Heads(4),
        send("HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 4\r\n\r\nslow"),
        send("HTTP/1.1 307 Temporary Redirect\r\nlocation: /moved/f1\r\ncontent-length: 0\r\n\r\n"),
        send("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
        send(&ok("body-3")),
        // The redirect's second hop, pushed behind the others.
        Step::Heads(1),
        send(&ok("body-1")),
        Step::Hang,
    ])
    .await;
    let mut c = Client::start(&s).await;
    c.push(0..4);
    let mut got = Vec::new();
    for _ in 0..4 {
        let a = c
            .conn
            .next(&c.endpoint, &limits(), &mut c.body)
            .await
            .unwrap();
        got.push(match a.result {
            Ok(_) => Got::Body(a.token, String::from_utf8(c.body.clone()).unwrap()),
            Err(e) => Got::Error(a.token, e),
        });
    }
    assert_eq!(
        got,
        vec![
            Got::Error(
                0,
                FetchError::Status {
                    code: 429,
                    retry_after: Some(Duration::from_secs(3))
                }
            ),
            Got::Error(
                2,
                FetchError::Status {
                    code: 404,
                    retry_after: None
                }
            ),
            Got::Body(3, "body-3".into()),
            Got::Body(1, "body-1".into()),
        ]
    );
    assert!(c.conn.is_usable());
    assert_eq!(c.conn.answered(), 5);
    let lines = s.requests.lock().unwrap().clone();
    assert_eq!(lines[4], "GET /moved/f1 HTTP/1.1");
}

#[tokio::test(start_paused = true)]
async fn a_pipelined_first_byte_deadline_counts_from_the_end_of_the_response_ahead() {
    // Response 0's body trickles for 1.8 s (pieces 600 ms apart, under the
    // 1 s idle limit); response 1 follows at once. Both requests were
    // written at 0 s: counted from then, response 1's head at 1.8 s would
    // miss its 1 s first-byte limit, but it could not start before 1.8 s.
    let s = server(vec![
        Step::Heads(2),
        send("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nbo"),
        Step::Pause(ms(600)),
        send("dy"),
        Step::Pause(ms(600)),
        send("-0"),
        Step::Pause(ms(600)),
        send(&ok("body-1")),
        Step::Hang,
    ])
    .await;
    let mut c = Client::start(&s).await;
    c.push(0..2);
    let got = c.answers(&limits()).await;
    assert_eq!(got, bodies(0..2));
    // Latency counts from writing the request, so it includes the wait.
    let latency = c.conn.last_latency();
    assert!(latency >= ms(1800) && latency <= ms(1805), "{latency:?}");
}

#[tokio::test]
async fn request_paths_that_could_break_the_request_line_are_refused() {
    let s = server(vec![Step::Hang]).await;
    let mut c = Client::start(&s).await;
    for bad in ["/a b", "/a\r\nx: y", "a", "", "/\u{e9}"] {
        assert!(
            matches!(c.conn.push(0, bad), Err(FetchError::BadRedirect(_))),
            "{bad:?}"
        );
    }
    assert_eq!(c.conn.in_flight(), 0);
}
