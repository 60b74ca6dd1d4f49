//! How oauthd's enums are stored in SQLite: as the same words the API shows. A word
//! oauthd does not know is a read error naming it, never a silent default.

use crate::store::{ConnectionStatus, DeliveryStatus, DeviceFlowStatus};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// `FromSql` by the type's `parse`, `ToSql` by its `as_str`.
macro_rules! stored_as_word {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                <$t>::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }

        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
    )*};
}

stored_as_word!(ConnectionStatus, DeviceFlowStatus, DeliveryStatus);
