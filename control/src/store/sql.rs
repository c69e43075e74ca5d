//! The values that go into a statement and come out of a row, the same
//! for both engines, so each query is written once (see the module docs
//! of `store` for the SQL both engines accept).

use super::{Result, StoreError};
use std::borrow::Cow;

/// One statement parameter. `$1`, `$2`, ... in the SQL take them in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'v> {
    Null,
    I64(i64),
    F64(f64),
    Bool(bool),
    Text(Cow<'v, str>),
    Bytes(Cow<'v, [u8]>),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::I64(i64::from(v))
    }
}
impl From<u64> for Value<'_> {
    /// Versions and durations; none comes near `i64::MAX`.
    fn from(v: u64) -> Self {
        Value::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl<'v> From<&'v str> for Value<'v> {
    fn from(v: &'v str) -> Self {
        Value::Text(Cow::Borrowed(v))
    }
}
impl<'v> From<&'v String> for Value<'v> {
    fn from(v: &'v String) -> Self {
        Value::Text(Cow::Borrowed(v))
    }
}
impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value::Text(Cow::Owned(v))
    }
}
impl<'v> From<&'v [u8]> for Value<'v> {
    fn from(v: &'v [u8]) -> Self {
        Value::Bytes(Cow::Borrowed(v))
    }
}
impl<'v, const N: usize> From<&'v [u8; N]> for Value<'v> {
    fn from(v: &'v [u8; N]) -> Self {
        Value::Bytes(Cow::Borrowed(v))
    }
}
impl<'v> From<&'v Vec<u8>> for Value<'v> {
    fn from(v: &'v Vec<u8>) -> Self {
        Value::Bytes(Cow::Borrowed(v))
    }
}
impl<'v, T: Into<Value<'v>>> From<Option<T>> for Value<'v> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Statement parameters: `args![a, b]` is `&[Value::from(a), Value::from(b)]`
/// (an array that coerces to `&[Value]`).
#[macro_export]
macro_rules! args {
    () => { &[] as &[$crate::store::Value<'_>] };
    ($($v:expr),+ $(,)?) => { &[$($crate::store::Value::from($v)),+] };
}

/// One cell of a result row, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    I64(i64),
    F64(f64),
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
}

/// One result row. The getters convert what each engine stores (SQLite
/// keeps booleans as integers) into what the code asks for, and say which
/// column did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Decode(format!("the row has no column {i}")))
    }

    fn wrong(&self, i: usize, want: &str) -> StoreError {
        StoreError::Decode(format!(
            "column {i} holds {:?}, expected {want}",
            self.0.get(i)
        ))
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::I64(v) => Ok(Some(*v)),
            Cell::Bool(b) => Ok(Some(i64::from(*b))),
            _ => Err(self.wrong(i, "an integer")),
        }
    }

    pub fn i64(&self, i: usize) -> Result<i64> {
        self.opt_i64(i)?.ok_or_else(|| self.wrong(i, "an integer"))
    }

    pub fn f64(&self, i: usize) -> Result<f64> {
        match self.cell(i)? {
            Cell::F64(v) => Ok(*v),
            Cell::I64(v) => Ok(*v as f64),
            _ => Err(self.wrong(i, "a number")),
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.cell(i)? {
            Cell::Bool(b) => Ok(*b),
            Cell::I64(v) => Ok(*v != 0),
            _ => Err(self.wrong(i, "a boolean")),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(s) => Ok(Some(s.clone())),
            _ => Err(self.wrong(i, "text")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or_else(|| self.wrong(i, "text"))
    }

    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Bytes(b) => Ok(Some(b.clone())),
            Cell::Text(s) => Ok(Some(s.as_bytes().to_vec())),
            _ => Err(self.wrong(i, "bytes")),
        }
    }
}

/// Checks that a statement names its parameters `$1`, `$2`, ... in the
/// order they first appear. SQLite numbers `$N` parameters by first
/// appearance, PostgreSQL by N: only in this order do both bind the same
/// value to the same place.
pub fn check_parameter_order(sql: &str) -> Result<()> {
    let bytes = sql.as_bytes();
    let mut next = 1u32;
    let mut seen_max = 0u32;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\'' {
            in_string = !in_string;
        } else if b == b'$' && !in_string {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<u32>() {
                if n > seen_max {
                    if n != next {
                        return Err(StoreError::Decode(format!(
                            "parameter ${n} appears before ${next} in: {sql}"
                        )));
                    }
                    next += 1;
                    seen_max = n;
                }
                i += digits.len();
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_must_first_appear_in_order() {
        assert!(check_parameter_order("SELECT $1, $2, $1, $3").is_ok());
        assert!(check_parameter_order("SELECT '$2', $1").is_ok());
        assert!(check_parameter_order("VALUES ($2, $1)").is_err());
        assert!(check_parameter_order("SELECT $1, $3").is_err());
    }

    #[test]
    fn rows_convert_what_each_engine_stores() {
        let r = Row(vec![
            Cell::I64(1),
            Cell::Bool(true),
            Cell::Null,
            Cell::Text("x".into()),
        ]);
        assert!(r.bool(0).unwrap());
        assert!(r.bool(1).unwrap());
        assert_eq!(r.opt_i64(2).unwrap(), None);
        assert!(r.i64(2).is_err());
        assert_eq!(r.text(3).unwrap(), "x");
        assert!(r.i64(3).unwrap_err().to_string().contains("column 3"));
        assert!(r.text(9).is_err());
    }
}
