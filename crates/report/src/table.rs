//! Plain-text tables: columns padded to their widest cell, each aligned left
//! or right, trailing spaces trimmed.

/// How a column's cells are padded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Align {
    Left,
    Right,
}

/// The table of `rows` under a header row of `columns`' names. A row shorter
/// than the header leaves its last columns empty.
pub fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, (_, align))) in row.iter().zip(columns).enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match align {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_to_the_widest_cell_and_lines_are_trimmed() {
        let cols = [("n", Align::Right), ("name", Align::Left)];
        let rows = vec![
            vec!["1".to_string(), "a".to_string()],
            vec!["100".to_string(), "bcdef".to_string()],
        ];
        assert_eq!(render(&cols, &rows), "  n name\n  1 a\n100 bcdef\n");
    }
}
