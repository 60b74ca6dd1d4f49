//! Reading the config file: where and why it does not parse, never quoting it.

use super::{ConfigError, FileConfig};
use std::path::Path;

pub(super) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse_text(path, &text)
}

/// The file's settings, or where and why it does not parse. The error never quotes the
/// file: the line it is on may hold a secret (`client_secret = s3cret` without its
/// quotes), and it goes to the terminal, or the journal under systemd.
pub(super) fn parse_text(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|mut e| {
        let at = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| {
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line = before.matches('\n').count() + 1;
                let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
        // Without its input the error leaves out the quoted line and names the key instead.
        e.set_input(None);
        let mut message = without_values(e.to_string().trim_end()).replace('\n', "; ");
        // `[notify]` for `[[notify]]`: a table where the key holds a list of them.
        if let Some(key) = message
            .strip_prefix("invalid type: map, expected a sequence; in `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let key = key.to_owned();
            message.push_str(&format!(
                " (write [[{key}]], with two brackets, above each of its entries: it is a list of tables)"
            ));
        }
        if let Some(hint) = top_level_key_in_a_table(&message) {
            message.push_str(&hint);
        }
        ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{}{message}", at.unwrap_or_default()),
        }
    })
}

/// For a key refused inside a table (``unknown field `listen`, …; in `states` ``) that is a
/// top-level setting: in TOML every key after a `[table]` line belongs to that table, so a
/// setting added at the end of the file lands in the last table.
fn top_level_key_in_a_table(message: &str) -> Option<String> {
    let key = message
        .strip_prefix("unknown field `")?
        .split('`')
        .next()
        .filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })?;
    let table = message.rsplit_once("; in `")?.1.strip_suffix('`')?;
    // A top-level key is one the file's top level does not refuse as unknown.
    let alone = toml::from_str::<FileConfig>(&format!("{key} = 0"));
    let top_level = match alone {
        Ok(_) => true,
        Err(e) => !e.message().starts_with("unknown field"),
    };
    top_level.then(|| {
        format!(
            " ({key} is a top-level setting: every key after a [table] line belongs to that table, here {table}; move it above the file's first [table] line)"
        )
    })
}

/// Serde's errors quote the value they refused (`invalid type: string "…", expected a
/// sequence`, ``unknown variant `…` ``, ``integer `…` ``): a secret written where a
/// table, a list, a number or one of a few words belongs would be printed. The value is
/// left out; the key, the line and what was expected are enough to find it.
pub(super) fn without_values(message: &str) -> String {
    // What comes before a value, and the character its quoting ends with.
    const QUOTED: [(&str, char); 6] = [
        ("string \"", '"'),
        ("unknown variant `", '`'),
        ("integer `", '`'),
        ("floating point `", '`'),
        ("boolean `", '`'),
        ("character `", '`'),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, prefix, close)) = QUOTED
        .iter()
        .filter_map(|&(prefix, close)| rest.find(prefix).map(|at| (at, prefix, close)))
        .min_by_key(|&(at, ..)| at)
    {
        // Keep the words ("unknown variant"), drop the quoted value.
        out.push_str(&rest[..at + prefix.len() - 2]);
        let quoted = &rest[at + prefix.len()..];
        let mut escaped = false;
        let end = quoted.char_indices().find_map(|(i, c)| match c {
            c if c == close && !escaped => Some(i),
            '\\' if close == '"' => {
                escaped = !escaped;
                None
            }
            _ => {
                escaped = false;
                None
            }
        });
        rest = end.and_then(|i| quoted.get(i + 1..)).unwrap_or("");
    }
    out.push_str(rest);
    out
}
