//! CRI container log files: the line parser and rendering for `kubectl logs`.
//!
//! A CRI log line is `<RFC3339Nano timestamp> <stdout|stderr> <tags> <message>`, where tags are
//! `F` (full line) or `P` (partial: the message continues in the next line), `:`-separated.

/// Options of `/containerLogs` (the query of `kubectl logs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub timestamps: bool,
    pub previous: bool,
    pub limit_bytes: Option<usize>,
    /// Only records at or after this time (`sinceSeconds`, `sinceTime`).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// One parsed CRI log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLogLine<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    /// `true` for `P`: the message has no line end and continues in the next record.
    pub partial: bool,
    pub message: &'a str,
}

/// Parses one CRI log line (without its trailing newline). `None` if it is not in CRI format.
pub fn parse_cri_line(line: &str) -> Option<CriLogLine<'_>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (timestamp, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // The message may be empty: "<ts> stdout F" is an empty line.
    let (tags, message) = match rest.split_once(' ') {
        Some((t, m)) => (t, m),
        None => (rest, ""),
    };
    if timestamp.is_empty() || tags.is_empty() {
        return None;
    }
    let partial = tags.split(':').next() == Some("P");
    Some(CriLogLine {
        timestamp,
        stream,
        partial,
        message,
    })
}

/// Turns CRI log records into what `kubectl logs` prints. Keeps the partial-line state across
/// calls so a followed file can be fed in chunks of whole records.
#[derive(Debug, Default)]
pub struct Renderer {
    timestamps: bool,
    /// Inside a partial line (its timestamp was already printed).
    in_partial: bool,
}

impl Renderer {
    pub fn new(timestamps: bool) -> Self {
        Self {
            timestamps,
            in_partial: false,
        }
    }

    /// Renders one record into `out`; lines not in CRI format are passed through as they are.
    pub fn push(&mut self, line: &str, out: &mut Vec<u8>) {
        match parse_cri_line(line) {
            Some(l) => {
                if self.timestamps && !self.in_partial {
                    out.extend_from_slice(l.timestamp.as_bytes());
                    out.push(b' ');
                }
                out.extend_from_slice(l.message.as_bytes());
                if !l.partial {
                    out.push(b'\n');
                }
                self.in_partial = l.partial;
            }
            None => {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// Renders a whole CRI log file's content with `tail_lines`, `timestamps` and `limit_bytes`.
pub fn render(content: &str, opts: &LogOptions) -> Vec<u8> {
    let records: Vec<&str> = content.lines().collect();
    // Tail counts logical lines: a run of partial records plus the full one that ends it.
    let start = match opts.tail_lines {
        None => 0,
        Some(n) => {
            let mut seen = 0;
            let mut start = records.len();
            let mut i = records.len();
            while i > 0 {
                let rec = records[i - 1];
                let partial = parse_cri_line(rec).map(|l| l.partial).unwrap_or(false);
                if !partial {
                    if seen == n {
                        break;
                    }
                    seen += 1;
                }
                i -= 1;
                start = i;
            }
            start
        }
    };
    let mut r = Renderer::new(opts.timestamps);
    let mut out = Vec::with_capacity(content.len());
    for rec in &records[start..] {
        if let Some(since) = opts.since {
            let at = parse_cri_line(rec)
                .and_then(|l| chrono::DateTime::parse_from_rfc3339(l.timestamp).ok());
            if at.is_some_and(|t| t < since) {
                continue;
            }
        }
        r.push(rec, &mut out);
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_lines() {
        let l = parse_cri_line("2024-05-01T10:00:00.123456789Z stdout F hello").unwrap();
        assert_eq!(l.timestamp, "2024-05-01T10:00:00.123456789Z");
        assert_eq!(l.stream, "stdout");
        assert!(!l.partial);
        assert_eq!(l.message, "hello");

        let l = parse_cri_line("2024-05-01T10:00:00Z stderr P part one ").unwrap();
        assert!(l.partial);
        assert_eq!(l.stream, "stderr");
        assert_eq!(l.message, "part one ");

        let l = parse_cri_line("2024-05-01T10:00:00Z stdout F").unwrap();
        assert_eq!(l.message, "");
        let l = parse_cri_line("2024-05-01T10:00:00Z stdout F:x  two spaces").unwrap();
        assert!(!l.partial);
        assert_eq!(l.message, " two spaces");

        assert!(parse_cri_line("hello world").is_none());
        assert!(parse_cri_line("").is_none());
    }

    #[test]
    fn renders_messages_only() {
        let content = "2024-05-01T10:00:00Z stdout F hello\n\
                       2024-05-01T10:00:01Z stderr P wor\n\
                       2024-05-01T10:00:01Z stderr F ld\n\
                       2024-05-01T10:00:02Z stdout F bye\n";
        let out = render(content, &LogOptions::default());
        assert_eq!(String::from_utf8(out).unwrap(), "hello\nworld\nbye\n");

        let tail = render(
            content,
            &LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(String::from_utf8(tail).unwrap(), "world\nbye\n");

        let ts = render(
            content,
            &LogOptions {
                tail_lines: Some(1),
                timestamps: true,
                ..Default::default()
            },
        );
        assert_eq!(String::from_utf8(ts).unwrap(), "2024-05-01T10:00:02Z bye\n");

        let none = render(
            content,
            &LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            },
        );
        assert!(none.is_empty());

        let limited = render(
            content,
            &LogOptions {
                limit_bytes: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(limited, b"hel");

        let since = render(
            content,
            &LogOptions {
                since: Some("2024-05-01T10:00:01Z".parse().unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(String::from_utf8(since).unwrap(), "world\nbye\n");
    }
}
