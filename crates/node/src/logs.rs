//! Container logs as containerd's CRI plugin writes them
//! (`TIMESTAMP STREAM TAG CONTENT`, TAG `F` for a full line, `P` for a fragment of a
//! longer one) and as the kubelet serves them: prefix stripped (or only the timestamp
//! kept), partial fragments joined, `tailLines`, `sinceSeconds` and `limitBytes` applied.

use std::path::{Path, PathBuf};

/// The query of `GET /containerLogs/...`, as upstream's `PodLogOptions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    /// Reads the query string; invalid numbers are errors, unknown keys are ignored.
    pub(crate) fn parse(query: Option<&str>) -> Result<LogOptions, String> {
        let mut options = LogOptions::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            let number = |name: &str| -> Result<i64, String> {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("{name}={value:?} is not an integer"))
            };
            let truthy = matches!(value, "true" | "1" | "True");
            match key {
                "follow" => options.follow = truthy,
                "previous" => options.previous = truthy,
                "timestamps" => options.timestamps = truthy,
                "tailLines" => options.tail_lines = Some(number(key)?.max(0) as usize),
                "sinceSeconds" => options.since_seconds = Some(number(key)?),
                "limitBytes" => options.limit_bytes = Some(number(key)?.max(0) as usize),
                _ => {}
            }
        }
        Ok(options)
    }
}

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CriLine<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line (without its newline); `None` for a line not in CRI format.
pub(crate) fn parse_line(line: &[u8]) -> Option<CriLine<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    // Tags may carry more than one flag, separated by ':'; P (partial) is the first.
    let partial = tag.split(|b| *b == b':').next() == Some(b"P");
    Some(CriLine {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// A whole log line: its fragments joined, stamped with the first fragment's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogLine {
    pub timestamp: String,
    pub content: Vec<u8>,
}

impl LogLine {
    /// The line as served: `content\n`, or `TIMESTAMP content\n` (RFC 3339 with
    /// nanoseconds, UTC) with timestamps.
    pub(crate) fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + 32);
        if timestamps {
            out.extend_from_slice(fixed_timestamp(&self.timestamp).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.content);
        out.push(b'\n');
        out
    }

    fn seconds(&self) -> Option<i64> {
        self.timestamp
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second())
    }
}

/// Upstream's `RFC3339NanoFixed`: always nine fractional digits.
fn fixed_timestamp(text: &str) -> String {
    match text.parse::<jiff::Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string(),
        Err(_) => text.to_string(),
    }
}

/// Joins CRI lines into whole lines; fragments wait for the full line that ends them.
#[derive(Default)]
pub(crate) struct Joiner {
    pending: Option<LogLine>,
}

impl Joiner {
    /// Feeds one raw line (without newline); returns a whole line when one completes.
    pub(crate) fn push(&mut self, raw: &[u8]) -> Option<LogLine> {
        let line = parse_line(raw)?;
        let mut whole = self.pending.take().unwrap_or_else(|| LogLine {
            timestamp: line.timestamp.to_string(),
            content: Vec::new(),
        });
        whole.content.extend_from_slice(line.content);
        if line.partial {
            self.pending = Some(whole);
            None
        } else {
            Some(whole)
        }
    }
}

/// The whole lines of `data` (complete raw lines only); returns them and how many bytes
/// were consumed, so a follower can continue after the last newline.
pub(crate) fn parse_lines(joiner: &mut Joiner, data: &[u8]) -> (Vec<LogLine>, usize) {
    let mut lines = Vec::new();
    let mut consumed = 0;
    while let Some(end) = data[consumed..].iter().position(|b| *b == b'\n') {
        if let Some(line) = joiner.push(&data[consumed..consumed + end]) {
            lines.push(line);
        }
        consumed += end + 1;
    }
    (lines, consumed)
}

/// Applies `sinceSeconds` (relative to `now`, Unix seconds) and `tailLines`.
pub(crate) fn select(lines: Vec<LogLine>, options: &LogOptions, now: i64) -> Vec<LogLine> {
    let mut lines: Vec<LogLine> = match options.since_seconds {
        Some(since) => lines
            .into_iter()
            .filter(|l| l.seconds().is_none_or(|s| s >= now - since))
            .collect(),
        None => lines,
    };
    if let Some(tail) = options.tail_lines {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    lines
}

/// Run `attempt` of container `container`'s log files in pod directory `pod_dir`,
/// newest first: `(attempt, path)`.
pub(crate) fn attempts(pod_dir: &Path, container: &str) -> Vec<(u32, PathBuf)> {
    let dir = pod_dir.join(container);
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let attempt = name.strip_suffix(".log")?.parse().ok()?;
            Some((attempt, e.path()))
        })
        .collect();
    found.sort_by_key(|a| std::cmp::Reverse(a.0));
    found
}

/// The log directory of pod `namespace/name` under `log_root` (`NS_NAME_UID`); the
/// newest when a pod of that name was made again.
pub(crate) fn pod_dir(log_root: &Path, namespace: &str, name: &str) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{name}_");
    std::fs::read_dir(log_root)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|uid| !uid.is_empty() && !uid.contains('_'))
            })
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-01-01T00:00:00.5Z stdout F one\n\
2024-01-01T00:00:01.000000001Z stderr P tw\n\
2024-01-01T00:00:01.2Z stderr P o and\n\
2024-01-01T00:00:01.3Z stderr F  more\n\
2024-01-01T00:00:02Z stdout F \n\
2024-01-01T00:00:03Z stdout F three\n\
2024-01-01T00:00:04Z stdout P unfinis";

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.content).into_owned())
            .collect()
    }

    #[test]
    fn parses_full_and_partial_lines() {
        let l = parse_line(b"2024-01-01T00:00:00Z stdout F hello world").unwrap();
        assert_eq!(
            (l.timestamp, l.stream, l.partial, l.content),
            ("2024-01-01T00:00:00Z", "stdout", false, &b"hello world"[..])
        );
        assert!(
            parse_line(b"2024-01-01T00:00:00Z stderr P x")
                .unwrap()
                .partial
        );
        assert_eq!(
            parse_line(b"2024-01-01T00:00:00Z stdout F")
                .unwrap()
                .content,
            b""
        );
        assert!(parse_line(b"not a cri line").is_none());

        let mut joiner = Joiner::default();
        let (lines, consumed) = parse_lines(&mut joiner, LOG.as_bytes());
        assert_eq!(texts(&lines), ["one", "two and more", "", "three"]);
        assert_eq!(lines[1].timestamp, "2024-01-01T00:00:01.000000001Z");
        // The unterminated last raw line is left for the next read.
        assert_eq!(consumed, LOG.rfind('\n').unwrap() + 1);
        let (more, _) = parse_lines(
            &mut joiner,
            b"2024-01-01T00:00:04Z stdout P unfinis\n2024-01-01T00:00:05Z stdout F hed\n",
        );
        assert_eq!(texts(&more), ["unfinished"]);
    }

    #[test]
    fn renders_timestamps_and_applies_tail_and_since() {
        let (lines, _) = parse_lines(&mut Joiner::default(), LOG.as_bytes());
        assert_eq!(lines[0].render(false), b"one\n");
        assert_eq!(
            String::from_utf8(lines[0].render(true)).unwrap(),
            "2024-01-01T00:00:00.500000000Z one\n"
        );
        let tail = select(
            lines.clone(),
            &LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
            0,
        );
        assert_eq!(texts(&tail), ["", "three"]);
        let none = select(
            lines.clone(),
            &LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            },
            0,
        );
        assert!(none.is_empty());
        // 2024-01-01T00:00:03Z is 1704067203.
        let since = select(
            lines,
            &LogOptions {
                since_seconds: Some(1),
                ..Default::default()
            },
            1_704_067_204,
        );
        assert_eq!(texts(&since), ["three"]);
    }

    #[test]
    fn options_from_query() {
        let o = LogOptions::parse(Some(
            "follow=true&tailLines=3&timestamps=1&limitBytes=10&sinceSeconds=5&previous=false",
        ))
        .unwrap();
        assert_eq!(
            o,
            LogOptions {
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(3),
                since_seconds: Some(5),
                limit_bytes: Some(10),
            }
        );
        assert!(LogOptions::parse(Some("tailLines=x")).is_err());
        assert_eq!(LogOptions::parse(None).unwrap(), LogOptions::default());
    }

    #[test]
    fn finds_pod_dirs_and_attempts() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("default_web_u1");
        std::fs::create_dir_all(pod.join("app")).unwrap();
        std::fs::create_dir_all(root.path().join("default_web-2_u2")).unwrap();
        for a in [0, 1, 10] {
            std::fs::write(pod.join("app").join(format!("{a}.log")), "").unwrap();
        }
        assert_eq!(pod_dir(root.path(), "default", "web"), Some(pod.clone()));
        assert_eq!(pod_dir(root.path(), "default", "nope"), None);
        let found: Vec<u32> = attempts(&pod, "app").into_iter().map(|a| a.0).collect();
        assert_eq!(found, [10, 1, 0]);
    }
}
