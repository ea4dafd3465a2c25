//! Phone numbers attached to flows at run time (Twilio's IncomingPhoneNumbers resource): each
//! number's voice and SMS URLs, shared by every node through the store.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Store, StoreError};

/// One phone number, in the shape of Twilio's IncomingPhoneNumber.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberRecord {
    /// `PN…`.
    pub sid: String,
    /// E.164 as given, without visual separators (`+15550100000`).
    pub phone_number: String,
    /// A name for people.
    pub friendly_name: String,
    /// Where calls go: a Studio flow webhook URL (`…/Flows/FW…`) routes them to that flow.
    pub voice_url: String,
    /// `GET` or `POST` (kept for Twilio clients; a flow URL is not fetched).
    pub voice_method: String,
    /// Where messages go, likewise.
    pub sms_url: String,
    /// `GET` or `POST`.
    pub sms_method: String,
    /// Creation time, RFC 3339 UTC.
    pub date_created: String,
    /// Last change, RFC 3339 UTC.
    pub date_updated: String,
}

macro_rules! number_columns {
    () => {
        "sid, phone_number, friendly_name, voice_url, voice_method, sms_url, sms_method, date_created, date_updated"
    };
}

fn number_from(r: &AnyRow) -> Result<NumberRecord, StoreError> {
    Ok(NumberRecord {
        sid: r.try_get(0)?,
        phone_number: r.try_get(1)?,
        friendly_name: r.try_get(2)?,
        voice_url: r.try_get(3)?,
        voice_method: r.try_get(4)?,
        sms_url: r.try_get(5)?,
        sms_method: r.try_get(6)?,
        date_created: r.try_get(7)?,
        date_updated: r.try_get(8)?,
    })
}

impl Store {
    /// Add a number. False when the number is already there (it is unique).
    pub async fn create_number(&self, n: &NumberRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "INSERT INTO phone_numbers (",
            number_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (phone_number) DO NOTHING"
        ))
        .bind(&n.sid)
        .bind(&n.phone_number)
        .bind(&n.friendly_name)
        .bind(&n.voice_url)
        .bind(&n.voice_method)
        .bind(&n.sms_url)
        .bind(&n.sms_method)
        .bind(&n.date_created)
        .bind(&n.date_updated)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replace a number's fields (all but its SID, number and creation time).
    pub async fn update_number(&self, n: &NumberRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE phone_numbers SET friendly_name = $1, voice_url = $2, voice_method = $3, \
             sms_url = $4, sms_method = $5, date_updated = $6 WHERE sid = $7",
        )
        .bind(&n.friendly_name)
        .bind(&n.voice_url)
        .bind(&n.voice_method)
        .bind(&n.sms_url)
        .bind(&n.sms_method)
        .bind(&n.date_updated)
        .bind(&n.sid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The number `sid`.
    pub async fn number(&self, sid: &str) -> Result<Option<NumberRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            number_columns!(),
            " FROM phone_numbers WHERE sid = $1"
        ))
        .bind(sid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| number_from(&r)).transpose()
    }

    /// Every number, oldest first.
    pub async fn numbers(&self) -> Result<Vec<NumberRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            number_columns!(),
            " FROM phone_numbers ORDER BY date_created, sid"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(number_from).collect()
    }

    /// Remove a number; whether it existed.
    pub async fn delete_number(&self, sid: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM phone_numbers WHERE sid = $1")
            .bind(sid)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
