//! Keyset-paginated lists on top of the kit's cursors: the shared query parameters (`limit`,
//! `cursor`, `sort`, `fields`), the `WHERE (key, id) > (…)` seek condition and the response.
//!
//! Every sort is made total by the id as a tie-breaker and is backed by an index on
//! `(key, id)`, so a page costs one index range scan however deep it is.

use crate::db::Param;
use axum::response::Response;
use http::Uri;
use orderly_kit::Problem;
use orderly_kit::conditional::CacheControl;
use orderly_kit::cursor::CursorCodec;
use orderly_kit::fields::FieldSelection;
use orderly_kit::pagination::{DEFAULT_LIMIT, ListBody, Page, list_response, parse_limit, written_list_response};
use orderly_kit::validation::{Fields, Invalid, query};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A sort order as named in `sort=`: a key, descending when prefixed with `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sort {
    pub key: &'static str,
    pub descending: bool,
}

impl Sort {
    /// Parses `raw` against the sort values a list documents (`created_at`, `-created_at`, …).
    pub fn parse(raw: &str, allowed: &[&'static str]) -> Result<Self, Invalid> {
        let name = query::one_of(raw, allowed)?;
        Ok(match name.strip_prefix('-') {
            Some(key) => Self { key, descending: true },
            None => Self { key: name, descending: false },
        })
    }
}

/// The sort orders of lists ordered by creation time, as documented.
#[derive(Serialize, utoipa::ToSchema)]
pub enum CreatedAtSort {
    /// Newest first (the default).
    #[serde(rename = "-created_at")]
    NewestFirst,
    #[serde(rename = "created_at")]
    OldestFirst,
}

/// Documents the parameters of a list ordered by creation time; filters are documented beside
/// it by each list.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; it is parsed by `ListParams::read`.
pub struct CreatedAtListQuery {
    /// Page size, 1–100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
    /// Opaque cursor from `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Sort order; `-created_at` (newest first) by default.
    #[param(inline)]
    sort: Option<CreatedAtSort>,
    /// Comma-separated top-level fields to return.
    fields: Option<String>,
}

/// Documents the `fields` parameter of a single-resource GET.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; it is parsed by `read_fields`.
pub struct FieldsQuery {
    /// Comma-separated top-level fields to return, e.g. `id,name`.
    fields: Option<String>,
}

/// The parameters every list takes.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub limit: i64,
    pub cursor: Option<String>,
    pub sort: Sort,
    pub fields: Option<FieldSelection>,
}

impl ListParams {
    /// Reads `limit`, `cursor`, `sort` (first of `sorts` is the default) and `fields`. Errors
    /// are recorded in `query`; `None` means at least one was invalid.
    pub fn read(query: &mut Fields<String>, available_fields: &[&'static str], sorts: &[&'static str]) -> Option<Self> {
        let limit = query.optional("limit", |v| parse_limit(v));
        let cursor = query.optional("cursor", |v| Ok(v.clone()));
        let sort = query.optional("sort", |v| Sort::parse(v, sorts));
        let fields = read_fields(query, available_fields);
        Some(Self {
            limit: limit?.unwrap_or(DEFAULT_LIMIT),
            cursor: cursor?,
            sort: sort?.unwrap_or(Sort::parse(sorts[0], sorts).expect("the default sort is allowed")),
            fields: fields?,
        })
    }

    /// Decodes the cursor, if any, for a list whose filters and sort are `scope`.
    pub fn position<P: DeserializeOwned>(
        &self,
        codec: &CursorCodec,
        scope: &impl Serialize,
    ) -> Result<Option<P>, Problem> {
        self.cursor.as_deref().map(|cursor| codec.decode(cursor, scope)).transpose()
    }
}

/// Reads the optional `fields` parameter of a single-resource GET or a list.
pub fn read_fields(query: &mut Fields<String>, available: &[&'static str]) -> Option<Option<FieldSelection>> {
    query.optional("fields", |v| FieldSelection::parse(v, available))
}

/// Adds ` AND <condition>` to a list query, each `$` in `condition` standing for `value`
/// (numbered after the parameters already in `values`).
pub fn and_where<'a>(sql: &mut String, values: &mut Vec<&'a dyn Param>, condition: &str, value: &'a dyn Param) {
    values.push(value);
    sql.push_str(" AND ");
    sql.push_str(&condition.replace('$', &format!("${}", values.len())));
}

/// Ends a list query (`SELECT … WHERE <filters>`) with its keyset page: the seek condition
/// `(key, id) > (…)` (or `<` when descending) after the row `after` names, the order by
/// `key, id`, and a limit one past `limit` (to learn whether more rows follow, see [`Page`]).
/// Parameters are numbered after those already in `params`.
///
/// [`Page`]: orderly_kit::pagination::Page
pub fn seek<'a>(
    sql: &mut String,
    params: &mut Vec<&'a dyn Param>,
    key: &str,
    descending: bool,
    after: Option<(&'a dyn Param, &'a uuid::Uuid)>,
    limit_plus_one: &'a i64,
) {
    use std::fmt::Write;
    let direction = if descending { "DESC" } else { "ASC" };
    if let Some((key_value, id)) = after {
        params.push(key_value);
        params.push(id);
        let comparison = if descending { '<' } else { '>' };
        let (k, i) = (params.len() - 1, params.len());
        write!(sql, " AND ({key}, id) {comparison} (${k}, ${i})").expect("writing to a string");
    }
    params.push(limit_plus_one);
    write!(sql, " ORDER BY {key} {direction}, id {direction} LIMIT ${}", params.len()).expect("writing to a string");
}

/// Responds with a page: each row as `render` makes it (only the fields `fields=` selects, if
/// any), the next cursor from the last row when more follow, and the list envelope.
pub fn respond<'a, T, B: Serialize>(
    uri: &Uri,
    page: &'a Page<T>,
    params: &ListParams,
    render: impl Fn(&'a T) -> B,
    next_cursor: impl FnOnce(&T) -> String,
    cache: CacheControl,
) -> Response {
    let write = |out: &mut Vec<u8>, row: &'a T| {
        serde_json::to_writer(out, &render(row)).expect("representations serialize");
    };
    respond_writing(uri, page, params, &render, write, next_cursor, cache)
}

/// As [`respond`], with each row written by `write` (the bytes `render` serializes to, written
/// directly with [`orderly_kit::json`]) unless `fields=` selects some: for the lists read most.
pub fn respond_writing<'a, T, B: Serialize>(
    uri: &Uri,
    page: &'a Page<T>,
    params: &ListParams,
    render: impl Fn(&'a T) -> B,
    write: impl Fn(&mut Vec<u8>, &'a T),
    next_cursor: impl FnOnce(&T) -> String,
    cache: CacheControl,
) -> Response {
    let next_cursor = match (page.has_more, page.rows.last()) {
        (true, Some(last)) => Some(next_cursor(last)),
        _ => None,
    };
    let (items, has_more) = (page.rows.len(), page.has_more);
    match &params.fields {
        None => {
            let write_all = |out: &mut Vec<u8>| {
                out.push(b'[');
                for (index, row) in page.rows.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write(out, row);
                }
                out.push(b']');
            };
            written_list_response(uri, items, write_all, next_cursor.as_deref(), has_more, cache)
        }
        Some(fields) => {
            let data = page
                .rows
                .iter()
                .map(|row| fields.apply(serde_json::to_value(render(row)).expect("representations serialize")))
                .collect::<Vec<Value>>();
            list_response(uri, ListBody { data, next_cursor, has_more }, cache)
        }
    }
}
