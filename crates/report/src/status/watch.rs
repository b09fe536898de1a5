//! The subcommand: one report, `--json`, and `--watch`.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bulkget_stats::schema::{ShardState, COORDINATOR_FILE, SHARDS_DIR};

use super::{load_at, render_table, resolve_state_dir, StatusArgs, StatusError};
use crate::format::human_duration;

/// Runs `bulkget status`, writing to `out`. Returns the exit code: 0 once a
/// report was printed (with `--watch`, once the run reached a final state).
/// Errors carry their own exit code ([`StatusError::exit_code`]): 1 when no
/// run is found, 2 when the directory cannot be read or `out` cannot be
/// written. A closed pipe (`bulkget status | head`) ends quietly with 0.
pub fn run_status(args: &StatusArgs, out: &mut dyn Write) -> Result<i32, StatusError> {
    let tty = args.tty.unwrap_or_else(|| io::stdout().is_terminal());
    run_status_with(
        args,
        out,
        tty,
        &mut SystemTime::now,
        &mut std::thread::sleep,
    )
}

/// [`run_status`] with the clock and the sleep supplied, so that tests run
/// `--watch` without waiting on real time.
pub(super) fn run_status_with(
    args: &StatusArgs,
    out: &mut dyn Write,
    tty: bool,
    clock: &mut dyn FnMut() -> SystemTime,
    sleep: &mut dyn FnMut(Duration),
) -> Result<i32, StatusError> {
    let result = if args.watch {
        watch(args, out, tty, clock, sleep)
    } else {
        let dir = resolve_state_dir(args.state_dir.as_deref());
        once(args, &dir, out, clock())
    };
    match result {
        Err(StatusError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        other => other,
    }
}

fn once(
    args: &StatusArgs,
    dir: &Path,
    out: &mut dyn Write,
    now: SystemTime,
) -> Result<i32, StatusError> {
    let report = load_at(dir, now)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).expect("a report always serialises");
        s.push('\n');
        s
    } else {
        render_table(&report, now)
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(StatusError::Output)?;
    Ok(0)
}

fn watch(
    args: &StatusArgs,
    out: &mut dyn Write,
    tty: bool,
    clock: &mut dyn FnMut() -> SystemTime,
    sleep: &mut dyn FnMut(Duration),
) -> Result<i32, StatusError> {
    let interval = Duration::from_millis(args.interval_ms);
    // In place on a terminal (unless the output is JSON lines for a
    // program); otherwise successive frames, so a log keeps the history.
    let redraw = tty && !args.json;
    let mut frames = 0u64;
    loop {
        // Resolved afresh each time: `bulkget status OUT --watch` started
        // before the run has created `OUT/.bulkget` must find it later.
        let dir = resolve_state_dir(args.state_dir.as_deref());
        let dir = dir.as_path();
        let now = clock();
        let (mut text, finished) = match load_at(dir, now) {
            Ok(report) => {
                // Over when the coordinator says so; without a coordinator
                // file (workers run by hand), when every worker has exited.
                let finished = match &report.coordinator {
                    Some(c) => c.state.is_final(),
                    None => {
                        !report.shards.is_empty()
                            && report.shards.iter().all(|s| s.state == ShardState::Exited)
                    }
                };
                let text = if args.json {
                    let mut s = serde_json::to_string(&report).expect("a report always serialises");
                    s.push('\n');
                    s
                } else {
                    let mut s = format!(
                        "bulkget status {}   every {}   Ctrl-C to stop\n\n",
                        dir.display(),
                        human_duration(interval.as_secs_f64())
                    );
                    s.push_str(&render_table(&report, now));
                    s
                };
                (text, finished)
            }
            // Watching may start before the run has written anything: wait
            // for it, as long as the directory itself is there. A program
            // reading JSON lines gets no line until there is a report.
            Err(StatusError::NoRun { .. }) if dir.is_dir() => {
                let text = if args.json {
                    String::new()
                } else {
                    format!(
                        "waiting for a bulkget run in {} (no {COORDINATOR_FILE} or \
                         {SHARDS_DIR}/ yet)   Ctrl-C to stop\n",
                        dir.display()
                    )
                };
                (text, false)
            }
            Err(e) => return Err(e),
        };
        if redraw {
            // Home, each line cleared to its end, then the rest of the screen
            // cleared: no blank flash between frames as a full clear gives.
            let mut framed = String::from(if frames == 0 {
                "\x1b[H\x1b[2J"
            } else {
                "\x1b[H"
            });
            for line in text.lines() {
                framed.push_str(line);
                framed.push_str("\x1b[K\n");
            }
            framed.push_str("\x1b[J");
            text = framed;
        } else if frames > 0 && !args.json {
            text.insert(0, '\n');
        }
        if !text.is_empty() {
            frames += 1;
        }
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(StatusError::Output)?;
        if finished {
            break;
        }
        sleep(interval);
    }
    Ok(0)
}
