//! The text pipeline of `tasks.md`: lowercase, split on whitespace, split leading and trailing
//! ASCII punctuation off each token (each punctuation character a token of its own), and in
//! tweets drop mentions and links.

/// Tokens of `text`. With `tweet`, tokens starting with `@`, `http://`, `https://` or `www.` are
/// dropped (before punctuation is split off).
pub fn tokenize(text: &str, tweet: bool) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let word = raw.to_lowercase();
        if tweet
            && (word.starts_with('@')
                || word.starts_with("http://")
                || word.starts_with("https://")
                || word.starts_with("www."))
        {
            continue;
        }
        let chars: Vec<char> = word.chars().collect();
        let start = chars
            .iter()
            .take_while(|c| c.is_ascii_punctuation())
            .count();
        if start == chars.len() {
            out.extend(chars.iter().map(|c| c.to_string()));
            continue;
        }
        let end = chars.len()
            - chars
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_punctuation())
                .count();
        out.extend(chars[..start].iter().map(|c| c.to_string()));
        out.push(chars[start..end].iter().collect());
        out.extend(chars[end..].iter().map(|c| c.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn splits_punctuation_and_drops_mentions_and_links() {
        assert_eq!(
            tokenize("Great, \"really\" GOOD!!", false),
            ["great", ",", "\"", "really", "\"", "good", "!", "!"]
        );
        assert_eq!(
            tokenize("@bob see http://x.co/a www.y.org :) isn't", true),
            ["see", ":", ")", "isn't"]
        );
        assert_eq!(tokenize("@bob hi", false), ["@", "bob", "hi"]);
        assert!(tokenize("   ", true).is_empty());
    }
}
