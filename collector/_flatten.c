/*
 * hopscope.collector._flatten — the OTLP → `spans` columns flattening of columns.py, in C.
 *
 * Why: turning each span's attribute list into a JSON object costs ~20 µs a span in Python (every KeyValue access
 * builds Python objects through upb), which alone would spend the collector's whole CPU budget. This walks the
 * protobuf wire format of an ExportTraceServiceRequest directly and builds the column lists in one pass, ~1-2 µs a
 * span. columns.py stays the reference implementation: it is used when this module is not built, and the tests
 * check that both produce the same rows (tests/test_columns.py).
 *
 * Input: payloads the receivers already decoded and validated with upb, so malformed input is not expected; it is
 * still bounds-checked everywhere and reported as ValueError, never read past its end.
 *
 * Semantics follow columns.py: attribute maps become JSON objects that keep OTLP value types (duplicate keys: the
 * last one wins), bytes become base64 strings, non-finite doubles the strings "NaN"/"Infinity"/"-Infinity";
 * promoted columns come from the PROMOTIONS table handed over by `configure()`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- column order: must match schema.SPAN_COLUMNS (checked by configure()) ---------------------------------- */
enum {
    C_TRACE_ID, C_SPAN_ID, C_PARENT, C_TRACE_STATE, C_FLAGS, C_NAME, C_KIND, C_START, C_END, C_DURATION,
    C_STATUS_CODE, C_STATUS_MESSAGE, C_SERVICE, C_SCOPE_NAME, C_SCOPE_VERSION,
    /* promoted columns follow in PROMOTIONS order, then: */
    N_FIXED = 15
};
#define MAX_PROMOTIONS 32
#define MAX_KEYS 8

typedef struct { const char *ptr; Py_ssize_t len; } slice_t;

typedef struct {
    int column;                       /* index in the output */
    int n_span_keys, n_resource_keys;
    PyObject *span_keys[MAX_KEYS];    /* bytes objects (UTF-8) */
    PyObject *resource_keys[MAX_KEYS];
    int derive_url;                   /* http_target: path of url.full / http.url */
    int status_code;                  /* http_status_code: INTEGER column */
} promotion_t;

static promotion_t promotions[MAX_PROMOTIONS];
static int n_promotions = -1;
static int n_columns = 0;
static int col_attributes, col_resource_attributes, col_scope_attributes, col_events, col_links;
static int col_dropped_attributes, col_dropped_events, col_dropped_links;
static PyObject *kind_names[6], *status_names[3];

/* ---- growable byte buffer -------------------------------------------------------------------------------------- */
typedef struct { char *data; Py_ssize_t len, cap; } buf_t;

static int buf_reserve(buf_t *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) { PyErr_NoMemory(); return -1; }
    b->data = data; b->cap = cap;
    return 0;
}
static int buf_put(buf_t *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n); b->len += n;
    return 0;
}
static int buf_putc(buf_t *b, char c) { return buf_put(b, &c, 1); }

/* ---- Arrow string column builder: the JSON columns go straight into Arrow buffers, no Python str per span ---- */
typedef struct { buf_t data, offsets, validity; Py_ssize_t n, nulls; } strcol_t;

static int strcol_append(strcol_t *c, const char *s, Py_ssize_t len, int valid) {
    if (c->n == 0) { int32_t zero = 0; if (buf_put(&c->offsets, (const char *)&zero, 4) < 0) return -1; }
    if (c->n % 8 == 0 && buf_putc(&c->validity, 0) < 0) return -1;
    if (valid) {
        if (c->data.len + len > INT32_MAX) { PyErr_SetString(PyExc_OverflowError, "string column over 2 GiB"); return -1; }
        if (buf_put(&c->data, s, len) < 0) return -1;
        c->validity.data[c->n / 8] |= (char)(1 << (c->n % 8));
    } else c->nulls++;
    int32_t end = (int32_t)c->data.len;
    if (buf_put(&c->offsets, (const char *)&end, 4) < 0) return -1;
    c->n++;
    return 0;
}
/* (validity, offsets, data, null_count) for pyarrow.Array.from_buffers */
static PyObject *strcol_result(strcol_t *c) {
    if (c->n == 0) { int32_t zero = 0; if (buf_put(&c->offsets, (const char *)&zero, 4) < 0) return NULL; }
    return Py_BuildValue("(y#y#y#n)", c->validity.data ? c->validity.data : "", c->validity.len,
                         c->offsets.data, c->offsets.len, c->data.data ? c->data.data : "", c->data.len, c->nulls);
}
static void strcol_free(strcol_t *c) { PyMem_Free(c->data.data); PyMem_Free(c->offsets.data); PyMem_Free(c->validity.data); }

/* ---- protobuf wire reading ------------------------------------------------------------------------------------ */
typedef struct { const uint8_t *p, *end; } reader_t;

static int read_varint(reader_t *r, uint64_t *out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return -1;
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) { *out = value; return 0; }
    }
    return -1;
}
/* Reads the next field header; returns 1 with field/wire set, 0 at end, -1 on error. */
static int next_field(reader_t *r, uint32_t *field, int *wire) {
    if (r->p >= r->end) return 0;
    uint64_t key;
    if (read_varint(r, &key) < 0) return -1;
    *field = (uint32_t)(key >> 3); *wire = (int)(key & 7);
    return 1;
}
static int read_len(reader_t *r, reader_t *sub) {
    uint64_t n;
    if (read_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) return -1;
    sub->p = r->p; sub->end = r->p + n; r->p += n;
    return 0;
}
static int read_fixed64(reader_t *r, uint64_t *out) {
    if (r->end - r->p < 8) return -1;
    memcpy(out, r->p, 8); r->p += 8;   /* little-endian hosts only (x86_64, aarch64) */
    return 0;
}
static int read_fixed32(reader_t *r, uint32_t *out) {
    if (r->end - r->p < 4) return -1;
    memcpy(out, r->p, 4); r->p += 4;
    return 0;
}
static int skip_field(reader_t *r, int wire) {
    uint64_t ignored; reader_t sub;
    switch (wire) {
    case 0: return read_varint(r, &ignored);
    case 1: if (r->end - r->p < 8) return -1; r->p += 8; return 0;
    case 2: return read_len(r, &sub);
    case 5: if (r->end - r->p < 4) return -1; r->p += 4; return 0;
    default: return -1;
    }
}
#define FAIL_MALFORMED() do { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); return -1; } while (0)

/* ---- JSON encoding -------------------------------------------------------------------------------------------- */
static int json_string(buf_t *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, n + 2) < 0) return -1;
    b->data[b->len++] = '"';
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (buf_put(b, s + run, i - run) < 0) return -1;
        char esc[6];
        switch (c) {
        case '"': if (buf_put(b, "\\\"", 2) < 0) return -1; break;
        case '\\': if (buf_put(b, "\\\\", 2) < 0) return -1; break;
        case '\n': if (buf_put(b, "\\n", 2) < 0) return -1; break;
        case '\r': if (buf_put(b, "\\r", 2) < 0) return -1; break;
        case '\t': if (buf_put(b, "\\t", 2) < 0) return -1; break;
        case '\b': if (buf_put(b, "\\b", 2) < 0) return -1; break;
        case '\f': if (buf_put(b, "\\f", 2) < 0) return -1; break;
        default:
            esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0'; esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
            if (buf_put(b, esc, 6) < 0) return -1;
        }
        run = i + 1;
    }
    if (buf_put(b, s + run, n - run) < 0) return -1;
    return buf_putc(b, '"');
}
static int json_int(buf_t *b, int64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    return buf_put(b, tmp, n);
}
static int json_uint(buf_t *b, uint64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    return buf_put(b, tmp, n);
}
static int json_double(buf_t *b, double v) {
    if (isnan(v)) return buf_put(b, "\"NaN\"", 5);
    if (isinf(v)) return v > 0 ? buf_put(b, "\"Infinity\"", 10) : buf_put(b, "\"-Infinity\"", 11);
    char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!text) return -1;
    int rc = buf_put(b, text, (Py_ssize_t)strlen(text));
    PyMem_Free(text);
    return rc;
}
static int json_base64(buf_t *b, const uint8_t *s, Py_ssize_t n) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (buf_reserve(b, (n + 2) / 3 * 4 + 2) < 0) return -1;
    char *o = b->data + b->len;
    *o++ = '"';
    Py_ssize_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = table[v >> 18]; *o++ = table[(v >> 12) & 63]; *o++ = table[(v >> 6) & 63]; *o++ = table[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
        *o++ = table[v >> 18]; *o++ = table[(v >> 12) & 63];
        *o++ = i + 1 < n ? table[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o++ = '"';
    b->len = o - b->data;
    return 0;
}

/* An AnyValue, decoded enough to encode or promote it. Nested values are kept as their raw bytes. */
enum { V_NONE, V_STRING, V_BOOL, V_INT, V_DOUBLE, V_ARRAY, V_KVLIST, V_BYTES };
typedef struct { int type; slice_t raw; int64_t i; double d; } value_t;

static int decode_any(const char *p, Py_ssize_t n, value_t *v) {
    reader_t r = {(const uint8_t *)p, (const uint8_t *)p + n};
    uint32_t field; int wire, more;
    v->type = V_NONE;
    while ((more = next_field(&r, &field, &wire)) == 1) {
        uint64_t u; reader_t sub;
        if ((field == 1 || field == 5 || field == 6 || field == 7) && wire == 2) {
            if (read_len(&r, &sub) < 0) FAIL_MALFORMED();
            v->type = field == 1 ? V_STRING : field == 5 ? V_ARRAY : field == 6 ? V_KVLIST : V_BYTES;
            v->raw.ptr = (const char *)sub.p; v->raw.len = sub.end - sub.p;
        } else if ((field == 2 || field == 3) && wire == 0) {
            if (read_varint(&r, &u) < 0) FAIL_MALFORMED();
            v->type = field == 2 ? V_BOOL : V_INT; v->i = (int64_t)u;
        } else if (field == 4 && wire == 1) {
            if (read_fixed64(&r, &u) < 0) FAIL_MALFORMED();
            v->type = V_DOUBLE; memcpy(&v->d, &u, 8);
        } else if (skip_field(&r, wire) < 0) FAIL_MALFORMED();
    }
    return more < 0 ? (PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"), -1) : 0;
}

static int json_kvlist(buf_t *b, const char *p, Py_ssize_t n, int field_no, int depth);

static int json_value(buf_t *b, const value_t *v, int depth) {
    if (depth > 200) { PyErr_SetString(PyExc_ValueError, "attribute values nested too deeply"); return -1; }
    switch (v->type) {
    case V_STRING: return json_string(b, v->raw.ptr, v->raw.len);
    case V_BOOL: return v->i ? buf_put(b, "true", 4) : buf_put(b, "false", 5);
    case V_INT: return json_int(b, v->i);
    case V_DOUBLE: return json_double(b, v->d);
    case V_BYTES: return json_base64(b, (const uint8_t *)v->raw.ptr, v->raw.len);
    case V_KVLIST: return json_kvlist(b, v->raw.ptr, v->raw.len, 1, depth + 1);
    case V_ARRAY: {
        reader_t r = {(const uint8_t *)v->raw.ptr, (const uint8_t *)v->raw.ptr + v->raw.len};
        uint32_t field; int wire, more, first = 1;
        if (buf_putc(b, '[') < 0) return -1;
        while ((more = next_field(&r, &field, &wire)) == 1) {
            if (field == 1 && wire == 2) {
                reader_t sub; value_t item;
                if (read_len(&r, &sub) < 0) FAIL_MALFORMED();
                if (decode_any((const char *)sub.p, sub.end - sub.p, &item) < 0) return -1;
                if (!first && buf_putc(b, ',') < 0) return -1;
                first = 0;
                if (json_value(b, &item, depth + 1) < 0) return -1;
            } else if (skip_field(&r, wire) < 0) FAIL_MALFORMED();
        }
        if (more < 0) FAIL_MALFORMED();
        return buf_putc(b, ']');
    }
    default: return buf_put(b, "null", 4);
    }
}

/* One KeyValue of an attribute list, located in the message. */
typedef struct { slice_t key; value_t value; } attr_t;

typedef struct { attr_t *items; Py_ssize_t len, cap; } attrs_t;

/* Collects the KeyValues under field `field_no` of a message. */
static int collect_attrs(const char *p, Py_ssize_t n, int field_no, attrs_t *out) {
    reader_t r = {(const uint8_t *)p, (const uint8_t *)p + n};
    uint32_t field; int wire, more;
    out->len = 0;
    while ((more = next_field(&r, &field, &wire)) == 1) {
        if ((int)field != field_no || wire != 2) { if (skip_field(&r, wire) < 0) FAIL_MALFORMED(); continue; }
        reader_t kv;
        if (read_len(&r, &kv) < 0) FAIL_MALFORMED();
        attr_t attr = {{"", 0}, {V_NONE, {NULL, 0}, 0, 0.0}};
        uint32_t f; int w, m;
        while ((m = next_field(&kv, &f, &w)) == 1) {
            reader_t sub;
            if (f == 1 && w == 2) {
                if (read_len(&kv, &sub) < 0) FAIL_MALFORMED();
                attr.key.ptr = (const char *)sub.p; attr.key.len = sub.end - sub.p;
            } else if (f == 2 && w == 2) {
                if (read_len(&kv, &sub) < 0) FAIL_MALFORMED();
                if (decode_any((const char *)sub.p, sub.end - sub.p, &attr.value) < 0) return -1;
            } else if (skip_field(&kv, w) < 0) FAIL_MALFORMED();
        }
        if (m < 0) FAIL_MALFORMED();
        if (out->len == out->cap) {
            Py_ssize_t cap = out->cap ? out->cap * 2 : 32;
            attr_t *items = PyMem_Realloc(out->items, cap * sizeof(attr_t));
            if (!items) { PyErr_NoMemory(); return -1; }
            out->items = items; out->cap = cap;
        }
        out->items[out->len++] = attr;
    }
    return more < 0 ? (PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"), -1) : 0;
}

static int same_key(const slice_t *a, const slice_t *b) {
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

/* JSON object of the attribute list; duplicate keys: the last one wins, as in a Python dict. */
static int json_attrs(buf_t *b, const attrs_t *attrs, int depth) {
    if (buf_putc(b, '{') < 0) return -1;
    int first = 1;
    for (Py_ssize_t i = 0; i < attrs->len; i++) {
        int shadowed = 0;
        for (Py_ssize_t j = i + 1; j < attrs->len && !shadowed; j++) shadowed = same_key(&attrs->items[i].key,
                                                                                         &attrs->items[j].key);
        if (shadowed) continue;
        if (!first && buf_putc(b, ',') < 0) return -1;
        first = 0;
        if (json_string(b, attrs->items[i].key.ptr, attrs->items[i].key.len) < 0 || buf_putc(b, ':') < 0) return -1;
        if (json_value(b, &attrs->items[i].value, depth) < 0) return -1;
    }
    return buf_putc(b, '}');
}

static int json_kvlist(buf_t *b, const char *p, Py_ssize_t n, int field_no, int depth) {
    attrs_t attrs = {NULL, 0, 0};
    int rc = collect_attrs(p, n, field_no, &attrs);
    if (rc == 0) rc = json_attrs(b, &attrs, depth);
    PyMem_Free(attrs.items);
    return rc;
}

/* ---- Python object helpers ------------------------------------------------------------------------------------- */
static PyObject *str_of(const char *s, Py_ssize_t n) { return PyUnicode_DecodeUTF8(s, n, "surrogateescape"); }
static PyObject *str_or_none(const char *s, Py_ssize_t n) {
    if (n == 0) Py_RETURN_NONE;
    return str_of(s, n);
}
static PyObject *hex_of(const uint8_t *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    PyObject *text = PyUnicode_New(2 * n, 127);
    if (!text) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < n; i++) { out[2 * i] = hex[s[i] >> 4]; out[2 * i + 1] = hex[s[i] & 15]; }
    return text;
}
static PyObject *buf_str(const buf_t *b) { return str_of(b->data, b->len); }

/* Append, stealing the reference. */
static int add(PyObject **columns, int column, PyObject *value) {
    if (!value) return -1;
    int rc = PyList_Append(columns[column], value);
    Py_DECREF(value);
    return rc;
}

/* Values the attributes JSON writes as strings promote as those strings, as columns.py turns them into strings before
 * promoting: bytes as their base64 text, non-finite doubles as "NaN"/"Infinity"/"-Infinity". `scratch` holds the
 * JSON string, `out` views it without its quotes. Anything else is returned as it is. */
static const value_t *as_text(buf_t *scratch, const value_t *v, value_t *out) {
    if (v->type != V_BYTES && !(v->type == V_DOUBLE && !isfinite(v->d))) return v;
    scratch->len = 0;
    if ((v->type == V_BYTES ? json_base64(scratch, (const uint8_t *)v->raw.ptr, v->raw.len)
                            : json_double(scratch, v->d)) < 0) return NULL;
    out->type = V_STRING;
    out->raw.ptr = scratch->data + 1;     /* without the quotes */
    out->raw.len = scratch->len - 2;
    return out;
}

/* A promoted column's value for one attribute: str stays str, anything else becomes its JSON text. */
static PyObject *promoted_text(buf_t *b, const value_t *v) {
    value_t text;
    if (!(v = as_text(b, v, &text))) return NULL;
    if (v->type == V_STRING) return str_of(v->raw.ptr, v->raw.len);
    if (v->type == V_NONE) Py_RETURN_NONE;
    b->len = 0;
    if (json_value(b, v, 0) < 0) return NULL;
    return buf_str(b);
}
static PyObject *promoted_status(buf_t *scratch, const value_t *v) {
    value_t text;
    if (!(v = as_text(scratch, v, &text))) return NULL;
    int64_t n = 0;
    if (v->type == V_INT) n = v->i;
    else if (v->type == V_STRING) {
        const char *s = v->raw.ptr, *e = s + v->raw.len;   /* [+-]?[0-9]{1,12}, as columns._STATUS_TEXT */
        int negative = 0;
        if (s < e && (*s == '+' || *s == '-')) negative = *s++ == '-';
        if (s == e || e - s > 12) Py_RETURN_NONE;
        for (; s < e; s++) { if (*s < '0' || *s > '9') Py_RETURN_NONE; n = n * 10 + (*s - '0'); }
        if (negative) n = -n;
    } else Py_RETURN_NONE;
    if (n < -2147483648LL || n > 2147483647LL) Py_RETURN_NONE;
    return PyLong_FromLongLong(n);
}
/* `http://host:8080/work?i=1` → `/work?i=1` (columns._path_of_url). */
static PyObject *path_of_url(buf_t *scratch, const value_t *v) {
    value_t text;
    if (!(v = as_text(scratch, v, &text))) return NULL;
    if (v->type != V_STRING) Py_RETURN_NONE;
    const char *s = v->raw.ptr; Py_ssize_t n = v->raw.len, from = 0;
    for (Py_ssize_t i = 0; i + 2 < n; i++) if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/') { from = i + 3; break; }
    for (Py_ssize_t i = from; i < n; i++) if (s[i] == '/') return str_of(s + i, n - i);
    Py_RETURN_NONE;
}

static const value_t *find_attr(const attrs_t *attrs, PyObject *key) {
    const char *k = PyBytes_AS_STRING(key); Py_ssize_t n = PyBytes_GET_SIZE(key);
    for (Py_ssize_t i = attrs->len - 1; i >= 0; i--)   /* last one wins */
        if (attrs->items[i].key.len == n && memcmp(attrs->items[i].key.ptr, k, n) == 0) return &attrs->items[i].value;
    return NULL;
}
/* Like columns.py: a key that is present counts even if its value is an empty AnyValue only when it has a type. */
static const value_t *first_present(const attrs_t *attrs, PyObject *const *keys, int n) {
    for (int i = 0; i < n; i++) {
        const value_t *v = find_attr(attrs, keys[i]);
        if (v && v->type != V_NONE) return v;
    }
    return NULL;
}

/* ---- the walk ------------------------------------------------------------------------------------------------- */
enum { J_ATTRIBUTES, J_RESOURCE, J_SCOPE, J_EVENTS, J_LINKS, N_JSON };
typedef struct {
    PyObject **columns;
    buf_t json;
    attrs_t span_attrs, resource_attrs, scratch;
    strcol_t json_columns[N_JSON];
    buf_t resource_json, scope_json;     /* the current group's, repeated on each of its spans */
    int resource_valid, scope_valid;
} state_t;

/* The JSON object of an attribute list into `out`; returns 1 if written, 0 for an empty list (NULL), -1 error. */
static int attrs_json_into(buf_t *out, const attrs_t *attrs) {
    out->len = 0;
    if (attrs->len == 0) return 0;
    return json_attrs(out, attrs, 0) < 0 ? -1 : 1;
}

static int json_events_or_links(state_t *st, const char *p, Py_ssize_t n, int field_no, int links, strcol_t *out) {
    reader_t r = {(const uint8_t *)p, (const uint8_t *)p + n};
    uint32_t field; int wire, more, count = 0;
    buf_t b = {NULL, 0, 0};
    if (buf_putc(&b, '[') < 0) return -1;
    while ((more = next_field(&r, &field, &wire)) == 1) {
        if ((int)field != field_no || wire != 2) { if (skip_field(&r, wire) < 0) goto malformed; continue; }
        reader_t item, walk;
        if (read_len(&r, &item) < 0) goto malformed;
        walk = item;
        slice_t name = {"", 0}, trace_id = {"", 0}, span_id = {"", 0}, state = {"", 0};
        uint64_t time_ns = 0, dropped = 0; uint32_t flags = 0;
        uint32_t f; int w, m;
        while ((m = next_field(&walk, &f, &w)) == 1) {
            reader_t sub;
            if (!links && f == 1 && w == 1) { if (read_fixed64(&walk, &time_ns) < 0) goto malformed; }
            else if (!links && f == 2 && w == 2) { if (read_len(&walk, &sub) < 0) goto malformed;
                name.ptr = (const char *)sub.p; name.len = sub.end - sub.p; }
            else if (links && (f == 1 || f == 2 || f == 3) && w == 2) {
                if (read_len(&walk, &sub) < 0) goto malformed;
                slice_t *target = f == 1 ? &trace_id : f == 2 ? &span_id : &state;
                target->ptr = (const char *)sub.p; target->len = sub.end - sub.p; }
            else if (f == (links ? 5u : 4u) && w == 0) { if (read_varint(&walk, &dropped) < 0) goto malformed; }
            else if (links && f == 6 && w == 5) { if (read_fixed32(&walk, &flags) < 0) goto malformed; }
            else if (skip_field(&walk, w) < 0) goto malformed;
        }
        if (m < 0) goto malformed;
        if (collect_attrs((const char *)item.p, item.end - item.p, links ? 4 : 3, &st->scratch) < 0) goto fail;
        if (count++ && buf_putc(&b, ',') < 0) goto fail;
        if (links) {
            static const char hex[] = "0123456789abcdef";
            if (buf_put(&b, "{\"trace_id\":\"", 13) < 0) goto fail;
            for (Py_ssize_t i = 0; i < trace_id.len; i++) {
                char pair[2] = {hex[(uint8_t)trace_id.ptr[i] >> 4], hex[(uint8_t)trace_id.ptr[i] & 15]};
                if (buf_put(&b, pair, 2) < 0) goto fail;
            }
            if (buf_put(&b, "\",\"span_id\":\"", 13) < 0) goto fail;
            for (Py_ssize_t i = 0; i < span_id.len; i++) {
                char pair[2] = {hex[(uint8_t)span_id.ptr[i] >> 4], hex[(uint8_t)span_id.ptr[i] & 15]};
                if (buf_put(&b, pair, 2) < 0) goto fail;
            }
            if (buf_put(&b, "\",\"trace_state\":", 16) < 0 || json_string(&b, state.ptr, state.len) < 0 ||
                buf_put(&b, ",\"flags\":", 9) < 0 || json_int(&b, flags) < 0) goto fail;
        } else {
            if (buf_put(&b, "{\"name\":", 8) < 0 || json_string(&b, name.ptr, name.len) < 0 ||
                buf_put(&b, ",\"time_ns\":", 11) < 0 || json_uint(&b, time_ns) < 0) goto fail;
        }
        if (buf_put(&b, ",\"attributes\":", 14) < 0 || json_attrs(&b, &st->scratch, 0) < 0 ||
            buf_put(&b, ",\"dropped_attributes_count\":", 28) < 0 || json_int(&b, (int64_t)(uint32_t)dropped) < 0 ||
            buf_putc(&b, '}') < 0) goto fail;
    }
    if (more < 0) goto malformed;
    if (buf_putc(&b, ']') < 0) goto fail;
    int rc = strcol_append(out, b.data, b.len, count > 0);
    PyMem_Free(b.data);
    return rc;
malformed:
    PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf");
fail:
    PyMem_Free(b.data);
    return -1;
}

/* Per resource/scope group: the values every span of the group repeats. */
typedef struct { PyObject *values[N_FIXED + MAX_PROMOTIONS + 16]; } group_t;

static int flatten_span(state_t *st, const char *p, Py_ssize_t n, PyObject *const *group_values,
                        PyObject *const *resource_promoted) {
    PyObject **cols = st->columns;
    reader_t r = {(const uint8_t *)p, (const uint8_t *)p + n};
    uint32_t field; int wire, more;
    slice_t trace_id = {"", 0}, span_id = {"", 0}, parent = {"", 0}, trace_state = {"", 0}, name = {"", 0};
    slice_t status = {"", 0};
    uint64_t kind = 0, start = 0, end = 0, dropped_attrs = 0, dropped_events = 0, dropped_links = 0;
    uint32_t flags = 0;
    while ((more = next_field(&r, &field, &wire)) == 1) {
        reader_t sub;
        if (wire == 2 && (field == 1 || field == 2 || field == 3 || field == 4 || field == 5 || field == 15)) {
            if (read_len(&r, &sub) < 0) FAIL_MALFORMED();
            slice_t s = {(const char *)sub.p, sub.end - sub.p};
            switch (field) {
            case 1: trace_id = s; break; case 2: span_id = s; break; case 3: trace_state = s; break;
            case 4: parent = s; break; case 5: name = s; break; default: status = s;
            }
        } else if (wire == 0 && (field == 6 || field == 10 || field == 12 || field == 14)) {
            uint64_t *target = field == 6 ? &kind : field == 10 ? &dropped_attrs : field == 12 ? &dropped_events
                                                                                                 : &dropped_links;
            if (read_varint(&r, target) < 0) FAIL_MALFORMED();
        } else if (wire == 1 && (field == 7 || field == 8)) {
            if (read_fixed64(&r, field == 7 ? &start : &end) < 0) FAIL_MALFORMED();
        } else if (wire == 5 && field == 16) {
            if (read_fixed32(&r, &flags) < 0) FAIL_MALFORMED();
        } else if (skip_field(&r, wire) < 0) FAIL_MALFORMED();
    }
    if (more < 0) FAIL_MALFORMED();

    if (add(cols, C_TRACE_ID, hex_of((const uint8_t *)trace_id.ptr, trace_id.len)) < 0) return -1;
    if (add(cols, C_SPAN_ID, hex_of((const uint8_t *)span_id.ptr, span_id.len)) < 0) return -1;
    int zero_parent = 1;
    for (Py_ssize_t i = 0; i < parent.len; i++) zero_parent &= parent.ptr[i] == 0;
    if (parent.len && !zero_parent) { if (add(cols, C_PARENT, hex_of((const uint8_t *)parent.ptr, parent.len)) < 0)
        return -1; }
    else if (PyList_Append(cols[C_PARENT], Py_None) < 0) return -1;
    if (add(cols, C_TRACE_STATE, str_or_none(trace_state.ptr, trace_state.len)) < 0) return -1;
    if (add(cols, C_FLAGS, PyLong_FromUnsignedLong(flags)) < 0) return -1;
    if (add(cols, C_NAME, str_of(name.ptr, name.len)) < 0) return -1;
    int32_t k = (int32_t)kind;   /* an int32 enum, truncated like upb does */
    if (PyList_Append(cols[C_KIND], kind_names[k >= 0 && k < 6 ? k : 0]) < 0) return -1;
    if (add(cols, C_START, PyLong_FromUnsignedLongLong(start)) < 0) return -1;
    if (add(cols, C_END, PyLong_FromUnsignedLongLong(end)) < 0) return -1;
    if (add(cols, C_DURATION, PyLong_FromLongLong((long long)(end - start))) < 0) return -1;

    /* status: 2 message, 3 code */
    reader_t sr = {(const uint8_t *)status.ptr, (const uint8_t *)status.ptr + status.len};
    slice_t message = {"", 0}; uint64_t code = 0;
    while ((more = next_field(&sr, &field, &wire)) == 1) {
        reader_t sub;
        if (field == 2 && wire == 2) { if (read_len(&sr, &sub) < 0) FAIL_MALFORMED();
            message.ptr = (const char *)sub.p; message.len = sub.end - sub.p; }
        else if (field == 3 && wire == 0) { if (read_varint(&sr, &code) < 0) FAIL_MALFORMED(); }
        else if (skip_field(&sr, wire) < 0) FAIL_MALFORMED();
    }
    if (more < 0) FAIL_MALFORMED();
    int32_t c = (int32_t)code;
    if (PyList_Append(cols[C_STATUS_CODE], status_names[c >= 0 && c < 3 ? c : 0]) < 0) return -1;
    if (add(cols, C_STATUS_MESSAGE, str_or_none(message.ptr, message.len)) < 0) return -1;
    for (int i = C_SERVICE; i <= C_SCOPE_VERSION; i++)
        if (PyList_Append(cols[i], group_values[i]) < 0) return -1;
    if (strcol_append(&st->json_columns[J_RESOURCE], st->resource_json.data, st->resource_json.len,
                      st->resource_valid) < 0) return -1;
    if (strcol_append(&st->json_columns[J_SCOPE], st->scope_json.data, st->scope_json.len, st->scope_valid) < 0)
        return -1;

    if (collect_attrs(p, n, 9, &st->span_attrs) < 0) return -1;
    int written = attrs_json_into(&st->json, &st->span_attrs);
    if (written < 0 || strcol_append(&st->json_columns[J_ATTRIBUTES], st->json.data, st->json.len, written) < 0)
        return -1;
    for (int i = 0; i < n_promotions; i++) {
        const promotion_t *pr = &promotions[i];
        const value_t *v = first_present(&st->span_attrs, pr->span_keys, pr->n_span_keys);
        PyObject *value;
        if (v) value = pr->status_code ? promoted_status(&st->json, v) : promoted_text(&st->json, v);
        else if (resource_promoted[i] != Py_None) { value = resource_promoted[i]; Py_INCREF(value); }
        else if (pr->derive_url) {
            static PyObject *url_keys[2];
            if (!url_keys[0]) { url_keys[0] = PyBytes_FromString("url.full"); url_keys[1] = PyBytes_FromString("http.url"); }
            const value_t *url = NULL;
            for (int j = 0; j < 2 && !url; j++) url = find_attr(&st->span_attrs, url_keys[j]);
            value = url ? path_of_url(&st->json, url) : (Py_INCREF(Py_None), Py_None);
        } else { value = Py_None; Py_INCREF(value); }
        if (add(cols, pr->column, value) < 0) return -1;
    }
    if (json_events_or_links(st, p, n, 11, 0, &st->json_columns[J_EVENTS]) < 0) return -1;
    if (json_events_or_links(st, p, n, 13, 1, &st->json_columns[J_LINKS]) < 0) return -1;
    if (add(cols, col_dropped_attributes, PyLong_FromUnsignedLong((uint32_t)dropped_attrs)) < 0) return -1;
    if (add(cols, col_dropped_events, PyLong_FromUnsignedLong((uint32_t)dropped_events)) < 0) return -1;
    if (add(cols, col_dropped_links, PyLong_FromUnsignedLong((uint32_t)dropped_links)) < 0) return -1;
    return 0;
}

static int flatten_scope_spans(state_t *st, const char *p, Py_ssize_t n, PyObject **group_values,
                               PyObject *const *resource_promoted) {
    reader_t r = {(const uint8_t *)p, (const uint8_t *)p + n};
    uint32_t field; int wire, more;
    slice_t scope = {"", 0};
    while ((more = next_field(&r, &field, &wire)) == 1) {   /* the scope first: spans repeat its values */
        reader_t sub;
        if (field == 1 && wire == 2) { if (read_len(&r, &sub) < 0) FAIL_MALFORMED();
            scope.ptr = (const char *)sub.p; scope.len = sub.end - sub.p; }
        else if (skip_field(&r, wire) < 0) FAIL_MALFORMED();
    }
    if (more < 0) FAIL_MALFORMED();
    slice_t scope_name = {"", 0}, scope_version = {"", 0};
    reader_t sr = {(const uint8_t *)scope.ptr, (const uint8_t *)scope.ptr + scope.len};
    while ((more = next_field(&sr, &field, &wire)) == 1) {
        reader_t sub;
        if ((field == 1 || field == 2) && wire == 2) {
            if (read_len(&sr, &sub) < 0) FAIL_MALFORMED();
            slice_t *t = field == 1 ? &scope_name : &scope_version;
            t->ptr = (const char *)sub.p; t->len = sub.end - sub.p;
        } else if (skip_field(&sr, wire) < 0) FAIL_MALFORMED();
    }
    if (more < 0) FAIL_MALFORMED();
    if (collect_attrs(scope.ptr, scope.len, 3, &st->scratch) < 0) return -1;
    if ((st->scope_valid = attrs_json_into(&st->scope_json, &st->scratch)) < 0) return -1;
    PyObject *name = str_or_none(scope_name.ptr, scope_name.len);
    PyObject *version = str_or_none(scope_version.ptr, scope_version.len);
    int rc = -1;
    if (!name || !version) goto done;
    group_values[C_SCOPE_NAME] = name; group_values[C_SCOPE_VERSION] = version;
    r.p = (const uint8_t *)p;
    while ((more = next_field(&r, &field, &wire)) == 1) {
        reader_t sub;
        if (field == 2 && wire == 2) {
            if (read_len(&r, &sub) < 0) { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); goto done; }
            if (flatten_span(st, (const char *)sub.p, sub.end - sub.p, group_values, resource_promoted) < 0) goto done;
        } else if (skip_field(&r, wire) < 0) { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); goto done; }
    }
    rc = more < 0 ? (PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"), -1) : 0;
done:
    Py_XDECREF(name); Py_XDECREF(version);
    return rc;
}

static int flatten_resource_spans(state_t *st, const char *p, Py_ssize_t n) {
    reader_t r = {(const uint8_t *)p, (const uint8_t *)p + n};
    uint32_t field; int wire, more;
    slice_t resource = {"", 0};
    while ((more = next_field(&r, &field, &wire)) == 1) {
        reader_t sub;
        if (field == 1 && wire == 2) { if (read_len(&r, &sub) < 0) FAIL_MALFORMED();
            resource.ptr = (const char *)sub.p; resource.len = sub.end - sub.p; }
        else if (skip_field(&r, wire) < 0) FAIL_MALFORMED();
    }
    if (more < 0) FAIL_MALFORMED();
    if (collect_attrs(resource.ptr, resource.len, 1, &st->resource_attrs) < 0) return -1;
    group_t group;
    PyObject *resource_promoted[MAX_PROMOTIONS];
    int rc = -1, made = 0;
    static PyObject *service_key;
    if (!service_key && !(service_key = PyBytes_FromString("service.name"))) return -1;
    const value_t *service = find_attr(&st->resource_attrs, service_key);
    group.values[C_SERVICE] = service ? promoted_text(&st->json, service) : (Py_INCREF(Py_None), Py_None);
    if (!group.values[C_SERVICE]) return -1;
    if ((st->resource_valid = attrs_json_into(&st->resource_json, &st->resource_attrs)) < 0) {
        Py_DECREF(group.values[C_SERVICE]); return -1; }
    for (; made < n_promotions; made++) {
        const value_t *v = first_present(&st->resource_attrs, promotions[made].resource_keys,
                                         promotions[made].n_resource_keys);
        resource_promoted[made] = v ? (promotions[made].status_code ? promoted_status(&st->json, v)
                                                                    : promoted_text(&st->json, v))
                                    : (Py_INCREF(Py_None), Py_None);
        if (!resource_promoted[made]) goto done;
    }
    r.p = (const uint8_t *)p;
    while ((more = next_field(&r, &field, &wire)) == 1) {
        reader_t sub;
        if (field == 2 && wire == 2) {
            if (read_len(&r, &sub) < 0) { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); goto done; }
            /* the span walk may overwrite the resource attribute scratch: keep it in its own buffer */
            if (flatten_scope_spans(st, (const char *)sub.p, sub.end - sub.p, group.values, resource_promoted) < 0)
                goto done;
        } else if (skip_field(&r, wire) < 0) { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); goto done; }
    }
    rc = more < 0 ? (PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"), -1) : 0;
done:
    for (int i = 0; i < made; i++) Py_DECREF(resource_promoted[i]);
    Py_DECREF(group.values[C_SERVICE]);
    return rc;
}

static PyObject *flatten(PyObject *self, PyObject *payloads) {
    if (n_promotions < 0) { PyErr_SetString(PyExc_RuntimeError, "call configure() first"); return NULL; }
    PyObject *iterator = PyObject_GetIter(payloads);
    if (!iterator) return NULL;
    PyObject *columns[N_FIXED + MAX_PROMOTIONS + 16] = {NULL};
    PyObject *result = NULL, *item;
    state_t st;
    memset(&st, 0, sizeof st);
    st.columns = columns;
    int json_column[N_JSON] = {col_attributes, col_resource_attributes, col_scope_attributes, col_events, col_links};
    for (int i = 0; i < n_columns; i++) if (!(columns[i] = PyList_New(0))) goto done;
    while ((item = PyIter_Next(iterator))) {
        Py_buffer view;
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) { Py_DECREF(item); goto done; }
        reader_t r = {view.buf, (const uint8_t *)view.buf + view.len};
        uint32_t field; int wire, more, rc = 0;
        while (rc == 0 && (more = next_field(&r, &field, &wire)) == 1) {
            reader_t sub;
            if (field == 1 && wire == 2) {
                rc = read_len(&r, &sub) < 0 ? (PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"), -1)
                     : flatten_resource_spans(&st, (const char *)sub.p, sub.end - sub.p);
            } else if (skip_field(&r, wire) < 0) { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); rc = -1; }
        }
        if (rc == 0 && more < 0) { PyErr_SetString(PyExc_ValueError, "malformed OTLP protobuf"); rc = -1; }
        PyBuffer_Release(&view);
        Py_DECREF(item);
        if (rc < 0) goto done;
    }
    if (PyErr_Occurred()) goto done;
    for (int j = 0; j < N_JSON; j++) {
        PyObject *buffers = strcol_result(&st.json_columns[j]);
        if (!buffers) goto done;
        Py_SETREF(columns[json_column[j]], buffers);
    }
    result = PyList_New(n_columns);
    if (!result) goto done;
    for (int i = 0; i < n_columns; i++) { PyList_SET_ITEM(result, i, columns[i]); columns[i] = NULL; }
done:
    Py_DECREF(iterator);
    for (int i = 0; i < n_columns; i++) Py_XDECREF(columns[i]);
    for (int j = 0; j < N_JSON; j++) strcol_free(&st.json_columns[j]);
    PyMem_Free(st.json.data); PyMem_Free(st.span_attrs.items); PyMem_Free(st.resource_attrs.items);
    PyMem_Free(st.scratch.items); PyMem_Free(st.resource_json.data); PyMem_Free(st.scope_json.data);
    return result;
}

/* configure(column_names, promotions): promotions = [(column, span_keys, resource_keys, derive_url)] */
static int column_index(PyObject *names, const char *name) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(names, i), name) == 0) return (int)i;
    PyErr_Format(PyExc_ValueError, "column %s missing", name);
    return -1;
}

static int load_keys(PyObject *keys, PyObject **out, int *count) {
    if (!PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) > MAX_KEYS) {
        PyErr_SetString(PyExc_ValueError, "keys must be a tuple of at most 8 strings"); return -1; }
    *count = (int)PyTuple_GET_SIZE(keys);
    for (int i = 0; i < *count; i++) if (!(out[i] = PyUnicode_AsUTF8String(PyTuple_GET_ITEM(keys, i)))) return -1;
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *names, *table;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &names, &PyTuple_Type, &table)) return NULL;
    static const char *fixed[N_FIXED] = {"trace_id", "span_id", "parent_span_id", "trace_state", "flags", "name",
                                         "kind", "start_ns", "end_ns", "duration_ns", "status_code", "status_message",
                                         "service_name", "scope_name", "scope_version"};
    n_columns = (int)PyTuple_GET_SIZE(names);
    if (n_columns > N_FIXED + MAX_PROMOTIONS + 16) { PyErr_SetString(PyExc_ValueError, "too many columns"); return NULL; }
    for (int i = 0; i < N_FIXED; i++)
        if (column_index(names, fixed[i]) != i) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "column %s must be at position %d", fixed[i], i);
            return NULL;
        }
    if ((col_attributes = column_index(names, "attributes")) < 0 ||
        (col_resource_attributes = column_index(names, "resource_attributes")) < 0 ||
        (col_scope_attributes = column_index(names, "scope_attributes")) < 0 ||
        (col_events = column_index(names, "events")) < 0 || (col_links = column_index(names, "links")) < 0 ||
        (col_dropped_attributes = column_index(names, "dropped_attributes_count")) < 0 ||
        (col_dropped_events = column_index(names, "dropped_events_count")) < 0 ||
        (col_dropped_links = column_index(names, "dropped_links_count")) < 0) return NULL;
    if (PyTuple_GET_SIZE(table) > MAX_PROMOTIONS) { PyErr_SetString(PyExc_ValueError, "too many promotions"); return NULL; }
    int count = (int)PyTuple_GET_SIZE(table);
    for (int i = 0; i < count; i++) {
        PyObject *column, *span_keys, *resource_keys; int derive_url;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(table, i), "UOOp", &column, &span_keys, &resource_keys, &derive_url))
            return NULL;
        const char *column_name = PyUnicode_AsUTF8(column);
        if (!column_name || (promotions[i].column = column_index(names, column_name)) < 0) return NULL;
        if (load_keys(span_keys, promotions[i].span_keys, &promotions[i].n_span_keys) < 0 ||
            load_keys(resource_keys, promotions[i].resource_keys, &promotions[i].n_resource_keys) < 0) return NULL;
        promotions[i].derive_url = derive_url;
        promotions[i].status_code = strcmp(column_name, "http_status_code") == 0;
    }
    static const char *kinds[6] = {"UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"};
    static const char *statuses[3] = {"UNSET", "OK", "ERROR"};
    for (int i = 0; i < 6; i++) if (!kind_names[i] && !(kind_names[i] = PyUnicode_InternFromString(kinds[i]))) return NULL;
    for (int i = 0; i < 3; i++)
        if (!status_names[i] && !(status_names[i] = PyUnicode_InternFromString(statuses[i]))) return NULL;
    n_promotions = count;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(column_names, promotions): set the column layout."},
    {"flatten", flatten, METH_O, "flatten(payloads) -> one entry per column, in column order: a list of values, "
                                 "or for JSON columns (validity, offsets, data, null_count) Arrow string buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flatten",
                                    "OTLP requests to spans columns, in C (see columns.py).", -1, methods};

PyMODINIT_FUNC PyInit__flatten(void) { return PyModule_Create(&module); }
