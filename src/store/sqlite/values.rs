//! How oauthd's enums are stored in SQLite: as the same words the API shows. A word
//! oauthd does not know is a read error naming it, never a silent default.

use crate::store::{ConnectionStatus, DeviceFlowStatus, UnknownValue};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

fn parsed<T>(value: ValueRef<'_>, parse: fn(&str) -> Result<T, UnknownValue>) -> FromSqlResult<T> {
    parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
}

impl FromSql for ConnectionStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        parsed(value, ConnectionStatus::parse)
    }
}

impl ToSql for ConnectionStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for DeviceFlowStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        parsed(value, DeviceFlowStatus::parse)
    }
}

impl ToSql for DeviceFlowStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}
