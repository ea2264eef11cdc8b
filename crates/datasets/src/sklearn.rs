//! Parsers for the text formats scikit-learn uses for its bundled datasets,
//! and gzip decompression.
//!
//! Each parser takes the raw bytes of a file, so that malformed inputs can be
//! tested without touching the file system. Every value must parse and be
//! finite, every label must be a non-negative integer `< n_classes`, every
//! row must have the same number of fields, and declared counts must match.
//! Blank lines (including a trailing newline) are ignored and `\r\n` line
//! endings are accepted.

use std::io::Read;

use flate2::read::GzDecoder;

use crate::dataset::{Dataset, Targets};
use crate::error::{DatasetError, Location, Result};

/// Decompresses a complete gzip stream.
///
/// The embedded `.gz` files are read with [`flate2`], the standard pure-Rust
/// DEFLATE implementation, so no C library or system zlib is needed.
///
/// # Arguments
/// * `what` - a name for the stream, used in error messages.
/// * `bytes` - the compressed bytes.
///
/// # Errors
/// [`DatasetError::Decompression`] if the stream is truncated or corrupt.
///
/// # Examples
/// ```
/// use lastmile_datasets::gunzip;
/// let err = gunzip("not gzip", b"plain text").unwrap_err();
/// assert!(matches!(err, lastmile_datasets::DatasetError::Decompression { .. }));
/// ```
pub fn gunzip(what: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| DatasetError::Decompression {
            what: what.to_owned(),
            source,
        })?;
    Ok(out)
}

/// Parses scikit-learn's labelled CSV format (iris, wine, breast cancer).
///
/// The first line is a header `n_samples,n_features,class_name_0,class_name_1,...`;
/// each following line holds `n_features` numbers and then an integer class
/// label. The dataset is named `"sklearn_csv"`; rename it with
/// [`Dataset::with_name`].
///
/// # Errors
/// * [`CoreError::Empty`](lastmile_core::CoreError::Empty) (through
///   [`DatasetError::Core`]) if there is no header or no data row.
/// * [`DatasetError::BadHeader`] if the header does not have the form above.
/// * [`DatasetError::ColumnCount`] if a row does not have `n_features + 1` fields.
/// * [`DatasetError::Malformed`] if a value is not a finite number or a label
///   not a non-negative integer (or the text is not UTF-8).
/// * [`DatasetError::LabelOutOfRange`] if a label is `>= ` the number of class names.
/// * [`DatasetError::RowCount`] if the number of data rows differs from `n_samples`.
///
/// # Examples
/// ```
/// use lastmile_datasets::parse_sklearn_csv;
/// let ds = parse_sklearn_csv(b"2,3,no,yes\n1,2,3,0\n4,5,6,1\n")?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.n_classes()), (2, 3, Some(2)));
/// assert_eq!(ds.row(1), &[4.0, 5.0, 6.0]);
///
/// let err = parse_sklearn_csv(b"2,3,no,yes\n1,2,3,0\n4,x,6,1\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 3, column 2: found \"x\", expected a finite number");
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn parse_sklearn_csv(bytes: &[u8]) -> Result<Dataset> {
    let mut lines = data_lines(bytes);
    let (header_line, header) = lines
        .next()
        .transpose()?
        .ok_or_else(|| DatasetError::empty("CSV input", 1))?;
    let (n_samples, n_features, class_names) = parse_header(header_line, header)?;
    let n_classes = class_names.len();
    let (features, labels) = parse_labelled_rows(lines, n_features, n_classes, split_csv)?;
    let found = labels.len();
    if found != n_samples {
        return Err(DatasetError::RowCount {
            what: format!("data rows (header declares {n_samples})"),
            found,
            expected: n_samples,
        });
    }
    finish_classes("sklearn_csv", features, n_features, labels, class_names)
}

/// Parses the scikit-learn digits CSV: no header, each line holds 64 pixel
/// values (0..16) and then the digit label (0..9).
///
/// The classes are named `"0"` to `"9"`.
///
/// # Errors
/// As [`parse_sklearn_csv`], except that there is no header; every line must
/// have 65 fields.
///
/// # Examples
/// ```
/// use lastmile_datasets::parse_digits_csv;
/// let row = vec!["1"; 64].join(",") + ",7\n";
/// let ds = parse_digits_csv(row.as_bytes())?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.labels()), (1, 64, Some(&[7][..])));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn parse_digits_csv(bytes: &[u8]) -> Result<Dataset> {
    const N_FEATURES: usize = 64;
    const N_CLASSES: usize = 10;
    let (features, labels) =
        parse_labelled_rows(data_lines(bytes), N_FEATURES, N_CLASSES, split_csv)?;
    let class_names = (0..N_CLASSES).map(|c| c.to_string()).collect();
    finish_classes("digits", features, N_FEATURES, labels, class_names)
}

/// Parses a regression dataset stored as two whitespace-separated text files,
/// as scikit-learn stores diabetes: one with a row of features per line, one
/// with a target value per line.
///
/// The number of features is taken from the first row; every row must have
/// as many. The dataset is named `"regression"`; rename it with
/// [`Dataset::with_name`].
///
/// # Errors
/// * [`CoreError::Empty`](lastmile_core::CoreError::Empty) (through
///   [`DatasetError::Core`]) if the features file has no rows.
/// * [`DatasetError::ColumnCount`] if a row has a different number of fields
///   than the first (or a target line more than one).
/// * [`DatasetError::Malformed`] if a value is not a finite number.
/// * [`DatasetError::RowCount`] if the files have different numbers of rows.
///
/// # Examples
/// ```
/// use lastmile_datasets::parse_whitespace_regression;
/// let ds = parse_whitespace_regression(b"1 2\n3 4\n", b"0.5\n1.5\n")?;
/// assert_eq!(ds.values(), Some(&[0.5, 1.5][..]));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn parse_whitespace_regression(features: &[u8], targets: &[u8]) -> Result<Dataset> {
    let mut values = Vec::new();
    let mut n_features = 0;
    let mut n_rows = 0;
    for item in data_lines(features) {
        let (line, text) = item?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        if n_rows == 0 {
            n_features = fields.len();
        } else if fields.len() != n_features {
            return Err(DatasetError::ColumnCount {
                line,
                found: fields.len(),
                expected: n_features,
            });
        }
        for (column, field) in fields.iter().enumerate() {
            values.push(parse_number(field, line, column + 1)?);
        }
        n_rows += 1;
    }
    if n_rows == 0 {
        return Err(DatasetError::empty("features file", 1));
    }
    let mut target_values = Vec::with_capacity(n_rows);
    for item in data_lines(targets) {
        let (line, text) = item?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 1 {
            return Err(DatasetError::ColumnCount {
                line,
                found: fields.len(),
                expected: 1,
            });
        }
        target_values.push(parse_number(fields[0], line, 1)?);
    }
    if target_values.len() != n_rows {
        return Err(DatasetError::RowCount {
            what: format!("target rows (the features file has {n_rows})"),
            found: target_values.len(),
            expected: n_rows,
        });
    }
    Dataset::new(
        "regression",
        values,
        n_features,
        Targets::Values(target_values),
    )
}

/// Iterates over the non-blank lines of `bytes` as `(1-based line number, text)`.
fn data_lines(bytes: &[u8]) -> impl Iterator<Item = Result<(usize, &str)>> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = i + 1;
            match std::str::from_utf8(raw) {
                Ok(text) => {
                    let text = text.trim();
                    (!text.is_empty()).then_some(Ok((line, text)))
                }
                Err(e) => {
                    let valid = &raw[..e.valid_up_to()];
                    let column = 1 + valid.iter().filter(|&&b| b == b',' || b == b' ').count();
                    Some(Err(DatasetError::Malformed {
                        line,
                        column,
                        found: "invalid UTF-8".to_owned(),
                        expected: "UTF-8 text".to_owned(),
                    }))
                }
            }
        })
}

fn split_csv(text: &str) -> Vec<&str> {
    text.split(',').map(str::trim).collect()
}

fn parse_header(line: usize, header: &str) -> Result<(usize, usize, Vec<String>)> {
    let bad = || DatasetError::BadHeader {
        found: header.to_owned(),
        expected: format!(
            "line {line} to be `n_samples,n_features,class_name,...` with integer counts, \
             n_features > 0 and at least one non-empty class name"
        ),
    };
    let fields = split_csv(header);
    if fields.len() < 3 {
        return Err(bad());
    }
    let n_samples: usize = fields[0].parse().map_err(|_| bad())?;
    let n_features: usize = fields[1].parse().map_err(|_| bad())?;
    if n_features == 0 || fields[2..].iter().any(|name| name.is_empty()) {
        return Err(bad());
    }
    let class_names = fields[2..].iter().map(|&s| s.to_owned()).collect();
    Ok((n_samples, n_features, class_names))
}

/// Parses rows of `n_features` numbers followed by a class label.
fn parse_labelled_rows<'a>(
    lines: impl Iterator<Item = Result<(usize, &'a str)>>,
    n_features: usize,
    n_classes: usize,
    split: fn(&'a str) -> Vec<&'a str>,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for item in lines {
        let (line, text) = item?;
        let fields = split(text);
        if fields.len() != n_features + 1 {
            return Err(DatasetError::ColumnCount {
                line,
                found: fields.len(),
                expected: n_features + 1,
            });
        }
        for (column, field) in fields[..n_features].iter().enumerate() {
            features.push(parse_number(field, line, column + 1)?);
        }
        let label = parse_label(fields[n_features], line, n_features + 1)?;
        if label >= n_classes {
            return Err(DatasetError::LabelOutOfRange {
                location: Location::Line(line),
                label,
                n_classes,
            });
        }
        labels.push(label);
    }
    Ok((features, labels))
}

fn finish_classes(
    name: &str,
    features: Vec<f32>,
    n_features: usize,
    labels: Vec<usize>,
    class_names: Vec<String>,
) -> Result<Dataset> {
    if labels.is_empty() {
        return Err(DatasetError::empty("data rows", 1));
    }
    let n_classes = class_names.len();
    Dataset::new(
        name,
        features,
        n_features,
        Targets::Classes {
            labels,
            n_classes,
            class_names,
        },
    )
}

fn parse_number(field: &str, line: usize, column: usize) -> Result<f32> {
    match field.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(DatasetError::Malformed {
            line,
            column,
            found: field.to_owned(),
            expected: "a finite number".to_owned(),
        }),
    }
}

/// Parses a class label: a non-negative integer, written either as `3` or `3.0`.
fn parse_label(field: &str, line: usize, column: usize) -> Result<usize> {
    if let Ok(label) = field.parse::<usize>() {
        return Ok(label);
    }
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f64 => {
            Ok(v as usize)
        }
        _ => Err(DatasetError::Malformed {
            line,
            column,
            found: field.to_owned(),
            expected: "a non-negative integer class label".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use lastmile_core::CoreError;

    use super::*;

    fn iris_like(body: &str) -> Result<Dataset> {
        parse_sklearn_csv(format!("2,2,a,b\n{body}").as_bytes())
    }

    #[test]
    fn accepts_crlf_blank_lines_and_float_labels() {
        let ds = iris_like("1,2,0\r\n\r\n3,4,1.0\r\n\n").expect("valid");
        assert_eq!(ds.features(), &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(ds.labels(), Some(&[0, 1][..]));
        assert_eq!(ds.class_names().map(<[String]>::len), Some(2));
    }

    #[test]
    fn header_errors() {
        for header in ["x,2,a", "2,2", "2,0,a", "2,2,a,", "-1,2,a", "2.5,2,a"] {
            let err = parse_sklearn_csv(format!("{header}\n1,2,0\n").as_bytes())
                .expect_err("bad header must fail");
            assert!(
                matches!(err, DatasetError::BadHeader { .. }),
                "{header}: {err}"
            );
        }
        let err = parse_sklearn_csv(b"").expect_err("empty");
        assert!(
            matches!(err, DatasetError::Core(CoreError::Empty { ref what, .. }) if what == "CSV input"),
            "{err}"
        );
    }

    #[test]
    fn header_count_mismatch() {
        let err = iris_like("1,2,0\n").expect_err("one row, two declared");
        assert!(
            matches!(
                err,
                DatasetError::RowCount {
                    found: 1,
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
        let err = iris_like("1,2,0\n1,2,0\n1,2,0\n").expect_err("three rows");
        assert!(matches!(err, DatasetError::RowCount { found: 3, .. }));
        let err = parse_sklearn_csv(b"0,2,a\n").expect_err("no rows");
        assert!(
            matches!(err, DatasetError::Core(CoreError::Empty { ref what, .. }) if what == "data rows"),
            "{err}"
        );
    }

    #[test]
    fn value_errors() {
        let err = iris_like("1,abc,0\n3,4,1\n").expect_err("non-numeric");
        match err {
            DatasetError::Malformed {
                line,
                column,
                ref found,
                ..
            } => assert_eq!((line, column, found.as_str()), (2, 2, "abc")),
            other => panic!("unexpected {other}"),
        }
        for bad in ["NaN", "inf", "-inf", "", "1e400"] {
            let err = iris_like(&format!("1,2,0\n3,{bad},1\n")).expect_err(bad);
            assert!(
                matches!(
                    err,
                    DatasetError::Malformed {
                        line: 3,
                        column: 2,
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn label_errors() {
        let err = iris_like("1,2,0\n3,4,2\n").expect_err("label 2 of 2 classes");
        assert!(matches!(
            err,
            DatasetError::LabelOutOfRange {
                location: Location::Line(3),
                label: 2,
                n_classes: 2
            }
        ));
        for bad in ["-1", "0.5", "one", "NaN"] {
            let err = iris_like(&format!("1,2,0\n3,4,{bad}\n")).expect_err(bad);
            assert!(
                matches!(err, DatasetError::Malformed { column: 3, .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn column_count_errors() {
        let err = iris_like("1,2,0\n3,1\n").expect_err("too few columns");
        assert!(matches!(
            err,
            DatasetError::ColumnCount {
                line: 3,
                found: 2,
                expected: 3
            }
        ));
        let err = iris_like("1,2,0,0\n3,4,1\n").expect_err("too many columns");
        assert!(matches!(err, DatasetError::ColumnCount { line: 2, .. }));
        let err = parse_digits_csv(b"1,2,3\n").expect_err("digits needs 65 fields");
        assert!(matches!(
            err,
            DatasetError::ColumnCount { expected: 65, .. }
        ));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let err = parse_sklearn_csv(b"1,2,a,b\n1,\xff,0\n").expect_err("not UTF-8");
        assert!(matches!(
            err,
            DatasetError::Malformed {
                line: 2,
                column: 2,
                ..
            }
        ));
    }

    #[test]
    fn regression_errors() {
        let err = parse_whitespace_regression(b"1 2\n3\n", b"1\n2\n").expect_err("ragged");
        assert!(matches!(
            err,
            DatasetError::ColumnCount {
                line: 2,
                found: 1,
                expected: 2
            }
        ));
        let err = parse_whitespace_regression(b"1 2\n3 4\n", b"1\n").expect_err("few targets");
        assert!(matches!(
            err,
            DatasetError::RowCount {
                found: 1,
                expected: 2,
                ..
            }
        ));
        let err = parse_whitespace_regression(b"1 2\n", b"1 2\n").expect_err("two targets");
        assert!(matches!(err, DatasetError::ColumnCount { expected: 1, .. }));
        let err = parse_whitespace_regression(b"1 2\n", b"nan\n").expect_err("NaN target");
        assert!(matches!(err, DatasetError::Malformed { line: 1, .. }));
        let err = parse_whitespace_regression(b"\n", b"").expect_err("empty");
        assert!(matches!(
            err,
            DatasetError::Core(CoreError::Empty { ref what, .. }) if what == "features file"
        ));
    }

    #[test]
    fn gunzip_errors() {
        let err = gunzip("garbage", b"\x1f\x8b\x08garbage").expect_err("corrupt");
        assert!(matches!(err, DatasetError::Decompression { .. }), "{err}");
    }
}
