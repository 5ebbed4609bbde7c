//! What a node's `/metrics` says, read as the tests need it: the samples
//! of one family, each with its labels and value. Only the text format
//! isle writes (OpenMetrics: `name{label="value",...} number` lines after
//! `#` comments); a line that does not parse is passed over.

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// `(label, value)` in the order written, unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        (self.labels.iter())
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The samples in `text` named `name` exactly.
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_line)
        .filter(|sample| sample.name == name)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(after) => parse_labels(after)?,
        None => (Vec::new(), &line[name_end..]),
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `label="value",...}` and what follows the brace.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (label, after) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((label.trim().to_owned(), value));
        text = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP isle_link_queue_messages link queue_messages (see server::remote stats).
# TYPE isle_link_queue_messages gauge
isle_link_queue_messages{shard="0",peer_node="2"} 17
isle_link_queue_messages{shard="0",peer_node="3"} 0
isle_link_queue_messages_max 5
isle_accounts{shard="1"} 42.5 1700000000
isle_odd{path="a \"b\"\\c"} 1
broken{shard="0" 3
# EOF
"#;

    #[test]
    fn a_family_reads_as_its_samples_with_labels() {
        let queue = samples(TEXT, "isle_link_queue_messages");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue[0].label("peer_node"), Some("2"));
        assert_eq!(queue[0].label("shard"), Some("0"));
        assert_eq!(queue[0].value, 17.0);
        assert_eq!(queue[1].value, 0.0);
        assert_eq!(queue[0].label("missing"), None);
        let max = samples(TEXT, "isle_link_queue_messages_max");
        assert_eq!((max.len(), max[0].value), (1, 5.0));
        assert!(max[0].labels.is_empty());
        assert_eq!(samples(TEXT, "isle_accounts")[0].value, 42.5);
        assert_eq!(
            samples(TEXT, "isle_odd")[0].label("path"),
            Some(r#"a "b"\c"#)
        );
        assert!(samples(TEXT, "broken").is_empty());
        assert!(samples(TEXT, "isle_link").is_empty());
    }
}
