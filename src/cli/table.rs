//! The terminal lists' tables (`keys list`, `connections list`, `events list`): each
//! column as wide as its widest cell, so that a long name (a key's namespaces, an account,
//! a target) never runs into the column after it.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Align {
    Left,
    /// Numbers: their last digits under each other.
    Right,
}

/// The lines of a table of `header` and `rows`, columns two spaces apart; the last column
/// is not padded, and no line ends in spaces. `align` gives each column's alignment
/// (`Left` where it says nothing).
pub(super) fn lines<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    align: &[Align],
) -> Vec<String> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let last = i + 1 == N;
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Right => line.push_str(&format!("{cell:>width$}")),
                Align::Left if last => line.push_str(cell),
                Align::Left => line.push_str(&format!("{cell:<width$}")),
            }
        }
        line.trim_end().to_owned()
    };
    std::iter::once(line(header))
        .chain(
            rows.iter()
                .map(|row| line(row.each_ref().map(String::as_str))),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_cell_widens_its_column_and_numbers_line_up_on_the_right() {
        let rows = [
            [
                "app".to_owned(),
                "2fa,2fa:*,reset,session,as:*".to_owned(),
                "7".into(),
            ],
            ["ops".to_owned(), "*".to_owned(), "12".into()],
        ];
        let table = lines(
            ["NAME", "NAMESPACES", "N"],
            &rows,
            &[Align::Left, Align::Left, Align::Right],
        );
        assert_eq!(
            table,
            [
                "NAME  NAMESPACES                     N",
                "app   2fa,2fa:*,reset,session,as:*   7",
                "ops   *                             12",
            ]
        );
        let last_unpadded = lines(["A", "B"], &[["x".into(), String::new()]], &[]);
        assert_eq!(last_unpadded, ["A  B", "x"]);
    }
}
