//! Text-protocol rows as strings, addressed by column name.

use std::sync::Arc;

use super::error::SqlError;

/// One row: values as UTF-8 (lossy) strings, NULL as `None`, sharing its result's column names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl Row {
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<Option<String>>) -> Self {
        Row { columns, values }
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }

    pub fn into_values(self) -> Vec<Option<String>> {
        self.values
    }

    /// The value of the first column named `name` (ASCII case-insensitive); `None` for NULL or a
    /// missing column (use [`Row::try_get`] to tell them apart).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.try_get(name).ok().flatten()
    }

    /// The value of column `name`: `Ok(None)` is NULL, an error names the columns there are.
    pub fn try_get(&self, name: &str) -> Result<Option<&str>, SqlError> {
        let i = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .ok_or_else(|| SqlError::NoSuchColumn {
                column: name.to_string(),
                columns: self.columns.to_vec(),
            })?;
        Ok(self.values.get(i).and_then(|v| v.as_deref()))
    }

    /// The value at position `i`; `None` for NULL or out of range.
    pub fn get_idx(&self, i: usize) -> Option<&str> {
        self.values.get(i).and_then(|v| v.as_deref())
    }
}

/// A whole result: the column names (also when there are no rows) and the rows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}
