//! What SQS takes as a queue name: 1 to 80 letters, digits, hyphens and
//! underscores, `.fifo` included for a FIFO queue. Checked before a job is
//! accepted, so a result bound for a name SQS would refuse is a 422 at
//! submit, not retries and then a dead letter; and checked again before a
//! send, so a name that got past (a consumed message) is dead-lettered at
//! once.

/// Why SQS would refuse `queue` as a queue name, or `None` if it takes it.
pub(crate) fn sqs_queue_name_problem(queue: &str) -> Option<String> {
    let length = queue.chars().count();
    if length > 80 {
        return Some(format!(
            "an SQS queue name has at most 80 characters; this has {length}"
        ));
    }
    let stem = queue.strip_suffix(".fifo").unwrap_or(queue);
    if stem.is_empty() {
        return Some("an SQS queue name needs at least one character before .fifo".to_owned());
    }
    stem.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        .map(|bad| {
            format!(
                "not a valid SQS queue name ({bad:?} is not allowed: letters, digits, hyphens and underscores only, or an http(s) URL for a webhook)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sqs_takes_and_refuses() {
        for good in ["results", "my_app-results-2", "jobs.fifo", &"a".repeat(80)] {
            assert_eq!(sqs_queue_name_problem(good), None, "{good}");
        }
        for bad in ["a b", "queue!", "é", ".fifo", "x.y", &"a".repeat(81), "a/b"] {
            assert!(sqs_queue_name_problem(bad).is_some(), "{bad}");
        }
    }
}
