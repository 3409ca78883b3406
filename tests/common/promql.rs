//! The PromQL side of the metric checks: a small scanner for what a PromQL expression (a dashboard
//! query, an alert rule) refers to, and readers of the Prometheus text exposition (`/metrics`) to hold
//! those references against.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A metric selector in a query: the name and its label matchers `(label, op, value)`.
#[derive(Debug)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<(String, String, String)>,
}

/// What a PromQL expression refers to: metric selectors and the labels of `by (...)`/`on (...)`.
#[derive(Debug, Default)]
pub struct QueryRefs {
    pub selectors: Vec<Selector>,
    pub grouping: Vec<String>,
}

/// Words that are PromQL operators or modifiers, never metric names.
const PROMQL_WORDS: [&str; 22] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "count_values",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Reads the quoted string starting at `chars[i]`; returns its content and the index after it.
fn quoted(chars: &[char], i: usize) -> (String, usize) {
    let quote = chars[i];
    let mut out = String::new();
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && j + 1 < chars.len() {
            j += 1;
        }
        out.push(chars[j]);
        j += 1;
    }
    (out, j + 1)
}

/// A small PromQL scanner: enough to find every metric name, matcher and grouping label of the
/// dashboard's queries (functions are words followed by `(`; `$variables` and `[ranges]` are skipped).
pub fn promql_refs(expr: &str) -> QueryRefs {
    let chars: Vec<char> = expr.chars().collect();
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let mut refs = QueryRefs::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = quoted(&chars, i).1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c == '{' {
            panic!("a selector without a metric name in {expr}");
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                let close = next + chars[next..].iter().position(|&c| c == ')').unwrap();
                let list: String = chars[next + 1..close].iter().collect();
                refs.grouping.extend(
                    list.split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
                i = close + 1;
            } else if chars.get(next) == Some(&'(') || PROMQL_WORDS.contains(&word.as_str()) {
                // A function or an aggregation: its arguments are scanned as they come.
            } else {
                let mut selector = Selector {
                    metric: word,
                    matchers: Vec::new(),
                };
                if chars.get(next) == Some(&'{') {
                    let mut j = next + 1;
                    loop {
                        while j < chars.len() && (chars[j].is_whitespace() || chars[j] == ',') {
                            j += 1;
                        }
                        if chars[j] == '}' {
                            break;
                        }
                        let start = j;
                        while is_ident(chars[j]) {
                            j += 1;
                        }
                        let label: String = chars[start..j].iter().collect();
                        j = skip_ws(j);
                        let op_start = j;
                        while "=~!".contains(chars[j]) {
                            j += 1;
                        }
                        let op: String = chars[op_start..j].iter().collect();
                        j = skip_ws(j);
                        let (value, after) = quoted(&chars, j);
                        selector.matchers.push((label, op, value));
                        j = after;
                    }
                    i = j + 1;
                }
                refs.selectors.push(selector);
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// The exposition as `sample name -> label sets of its series`.
pub fn exposition_series(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let chars: Vec<char> = line.chars().collect();
        let name_end = chars.iter().position(|&c| c == '{' || c == ' ').unwrap();
        let name: String = chars[..name_end].iter().collect();
        let mut labels = BTreeMap::new();
        if chars[name_end] == '{' {
            let mut j = name_end + 1;
            while chars[j] != '}' {
                let start = j;
                while chars[j] != '=' {
                    j += 1;
                }
                let label: String = chars[start..j].iter().collect();
                let (value, after) = quoted(&chars, j + 1);
                labels.insert(label, value);
                j = after;
                if chars[j] == ',' {
                    j += 1;
                }
            }
        }
        series.entry(name).or_default().push(labels);
    }
    series
}

/// The value of an unlabelled sample in an exposition body.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `promtool args` in `dir` with `stdin` as its input; returns whether it exited 0 and its exit
/// status and output. Fails the test when promtool is not installed: a check that silently does not
/// run proves nothing.
pub fn promtool(args: &[&str], dir: &Path, stdin: &str) -> (bool, String) {
    let mut child = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not on PATH: run scripts/setup-promtool.sh")
        }
        Err(e) => panic!("starting promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "promtool {}: exit {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
