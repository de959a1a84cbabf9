/* The compiled forms of the analytics pipeline's steps (analytics/pipeline.py lists them, with the readable
 * implementation each one mirrors): `columns` (trace.Trace.read), `memoised` (classify.Classifier.roles, and the
 * memo of clock_domains.trace_domains), `node_domains` + `inherit_domains` (clock_domains.trace_domains),
 * `cross_pairs` + `fold_pairs` (skew.pair_bounds), `path` (span_tree + critical_path + PathLabeller, in
 * trace_path.py), and two output helpers: `sections_body` (critical_path_json.sections_json as JSON text) and
 * `totals` (TracePath.totals).
 *
 * Optional, like collector/_flatten.c, and loaded the same way: analytics/trace_accelerator.py imports it and calls
 * configure() with the one Python table it needs (the labeller's role bits), and where it is not built every step
 * runs its readable implementation. Every function returns None on input it does not expect (a span that is not a
 * dict, a time that is not an int or lies beyond +-2^62, a value whose hash fails, a list that changed length, ...);
 * the pipeline then runs the readable implementation and counts the hand-back. Only MemoryError and what is not an
 * Exception (KeyboardInterrupt, SystemExit raised in a Python callback) propagate. No function keeps state between
 * calls. tests/test_pipeline_steps.py checks that every function gives what the readable implementation gives.
 *
 * Nothing recurses: the clipping and the walk keep explicit stacks, so a 100,000-deep chain is fine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TIME_LIMIT ((int64_t)1 << 62) /* |t| below this: every difference of two times fits in int64 */

/* What the labeller asks of a role, one bit each: set by configure() from path_labels.LABEL_QUESTIONS (the one
 * place their meaning is written down); path() hands back until it has been called. */
static long R_APP_CLIENT, R_OUTBOUND, R_UPSTREAM, R_CALLEE, R_LAYER_IPTABLES, R_LAYER_NETWORK, R_LAYER,
    R_APP /* service_of reads only the service name */;
static int configured;

static PyObject *S_span_id, *S_parent_span_id, *S_start_ns, *S_end_ns, *S_kind, *S_service_name, *S_attributes,
    *S_resource_attributes, *S_links, *S_name, *S_empty,
    *C_untraced, *C_retry, *C_proxy, *C_network, *C_iptables;

/* Unexpected input: clear the error and answer None (the caller runs the Python reference). MemoryError and a
 * BaseException that is not an Exception (KeyboardInterrupt, SystemExit from a callback) propagate: rerunning the
 * reference would swallow the user's Ctrl-C or exit. */
static PyObject *fallback(void) {
    if (PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError) || !PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* dict.get(key) (borrowed, None when absent); NULL with an error set when the lookup fails. */
static PyObject *dict_get(PyObject *d, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (v == NULL && !PyErr_Occurred()) v = Py_None;
    return v;
}

/* list[i] with the length checked (a callback may have changed the list): borrowed, NULL if out of range. */
static PyObject *item(PyObject *list, Py_ssize_t i) {
    if (!PyList_Check(list) || i < 0 || i >= PyList_GET_SIZE(list)) return NULL;
    return PyList_GET_ITEM(list, i);
}

static int is_list_of(PyObject *list, Py_ssize_t n) { return PyList_CheckExact(list) && PyList_GET_SIZE(list) == n; }

static int as_time(PyObject *v, int64_t *out) {
    if (!PyLong_CheckExact(v)) return -1;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) return -1;
    if (x <= -TIME_LIMIT || x >= TIME_LIMIT) return -1;
    *out = (int64_t)x;
    return 0;
}

static int read_times(PyObject *list, Py_ssize_t n, int64_t *out) {
    if (!is_list_of(list, n)) return -1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (as_time(PyList_GET_ITEM(list, i), &out[i]) < 0) return -1;
    return 0;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b) != 0 && ((a < 0) != (b < 0))) q -= 1;
    return q;
}

/* ---- columns(spans, empty, attribute_keys, resource_keys) : TraceColumns.of ----------------------------------
 * The twelve columns of TraceColumns (after spans), then per given key [m.get(key) for m in attributes] and the
 * same for resources, read while each span's maps are in cache. */

static PyObject *columns(PyObject *self, PyObject *args) {
    PyObject *spans, *empty, *map_keys[2] = {NULL, NULL}, *map_lists[2] = {NULL, NULL};
    if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyList_Type, &spans, &PyDict_Type, &empty, &PyTuple_Type, &map_keys[0],
                          &PyTuple_Type, &map_keys[1]))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(spans);
    for (int f = 0; f < 2; f++) {  /* the attribute and resource keys to read in the same pass */
        map_lists[f] = PyTuple_New(PyTuple_GET_SIZE(map_keys[f]));
        if (!map_lists[f]) goto early;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(map_keys[f]); k++) {
            PyObject *list = PyUnicode_CheckExact(PyTuple_GET_ITEM(map_keys[f], k)) ? PyList_New(n) : NULL;
            if (!list) goto early;
            PyTuple_SET_ITEM(map_lists[f], k, list);
        }
    }
    PyObject *ids = PyList_New(n), *parent_ids = PyList_New(n), *start = PyList_New(n), *end = PyList_New(n),
             *kinds = PyList_New(n), *services = PyList_New(n), *attributes = PyList_New(n),
             *resources = PyList_New(n), *links = PyList_New(n), *names = PyList_New(n), *position = PyDict_New(),
             *parent = PyList_New(n), *result = NULL;
    PyObject **positions = PyMem_Calloc(n ? (size_t)n : 1, sizeof(PyObject *));
    PyObject *minus_one = PyLong_FromLong(-1);
    if (!ids || !parent_ids || !start || !end || !kinds || !services || !attributes || !resources || !links ||
        !names || !position || !parent || !positions || !minus_one) {
        if (!positions) PyErr_NoMemory();
        goto done;
    }
    PyObject *const fields[] = {S_parent_span_id, S_kind, S_service_name, S_links, S_name};
    PyObject *const targets[] = {parent_ids, kinds, services, links, names};
    /* No Python code runs in this loop: ids and parent ids must be str (or None), maps dicts (or None), times
     * ints; anything else is the reference's to handle. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (!PyDict_Check(span)) goto unexpected;
        PyObject *id = PyDict_GetItemWithError(span, S_span_id);
        PyObject *s = PyDict_GetItemWithError(span, S_start_ns);
        PyObject *e = PyDict_GetItemWithError(span, S_end_ns);
        if (!id || !s || !e || !PyUnicode_CheckExact(id) || !PyLong_CheckExact(s) || !PyLong_CheckExact(e))
            goto unexpected;  /* int() and other ids: the reference */
        Py_INCREF(id); PyList_SET_ITEM(ids, i, id);
        Py_INCREF(s); PyList_SET_ITEM(start, i, s);
        Py_INCREF(e); PyList_SET_ITEM(end, i, e);
        for (int f = 0; f < 5; f++) {
            PyObject *v = dict_get(span, fields[f]);
            if (!v || (f == 0 && v != Py_None && !PyUnicode_CheckExact(v))) goto unexpected;
            Py_INCREF(v);
            PyList_SET_ITEM(targets[f], i, v);
        }
        PyObject *const maps[] = {S_attributes, S_resource_attributes};
        PyObject *const map_targets[] = {attributes, resources};
        for (int f = 0; f < 2; f++) {
            PyObject *m = dict_get(span, maps[f]);
            if (!m || (m != Py_None && !PyDict_CheckExact(m))) goto unexpected;  /* `m or EMPTY`: the reference */
            if (m == Py_None || PyDict_GET_SIZE(m) == 0) m = empty;
            Py_INCREF(m);
            PyList_SET_ITEM(map_targets[f], i, m);
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(map_keys[f]); k++) {
                PyObject *v = dict_get(m, PyTuple_GET_ITEM(map_keys[f], k));
                if (!v) goto unexpected;
                Py_INCREF(v);
                PyList_SET_ITEM(PyTuple_GET_ITEM(map_lists[f], k), i, v);
            }
        }
        positions[i] = PyLong_FromSsize_t(i);
        if (!positions[i] || PyDict_SetItem(position, id, positions[i]) < 0) goto unexpected;
    }
    int has_empty = PyDict_Contains(position, S_empty);
    if (has_empty != 0) goto unexpected;  /* an empty span id (or an error): the reference raises TypeError */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(parent_ids, i), *at = minus_one;
        if (p != Py_None && PyUnicode_GET_LENGTH(p) > 0) {  /* str or None, checked above */
            at = PyDict_GetItemWithError(position, p);
            if (!at) {
                if (PyErr_Occurred()) goto unexpected;
                at = minus_one;
            }
        }
        Py_INCREF(at);
        PyList_SET_ITEM(parent, i, at);
    }
    result = PyTuple_Pack(14, ids, parent_ids, start, end, kinds, services, attributes, resources, links, names,
                          position, parent, map_lists[0], map_lists[1]);
    goto done;
unexpected:
    result = fallback();
done:
    Py_XDECREF(ids); Py_XDECREF(parent_ids); Py_XDECREF(start); Py_XDECREF(end); Py_XDECREF(kinds);
    Py_XDECREF(services); Py_XDECREF(attributes); Py_XDECREF(resources); Py_XDECREF(links); Py_XDECREF(names);
    Py_XDECREF(position); Py_XDECREF(parent); Py_XDECREF(minus_one);
    if (positions) {
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(positions[i]);
        PyMem_Free(positions);
    }
    Py_XDECREF(map_lists[0]); Py_XDECREF(map_lists[1]);
    return result;
early:
    Py_XDECREF(map_lists[0]); Py_XDECREF(map_lists[1]);
    return fallback();
}

/* ---- memoised(memo, limit, compute, spec, sources, positions) --------------------------------------------
 * For each position i (all when positions is None): key = tuple(read(s, k, i) for s, k in spec), where read is
 * sources[s][i].get(k), or sources[s][i] itself when k is None. The value is memo[key]; on a miss compute(i),
 * stored (the memo cleared first when it holds `limit` keys); an unhashable key: compute(i), not stored.
 * Classifier.roles and trace_domains' memo, read in one pass. */

static PyObject *memoised(PyObject *self, PyObject *args) {
    PyObject *memo, *compute, *spec, *sources, *positions;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!nOO!O!O", &PyDict_Type, &memo, &limit, &compute, &PyTuple_Type, &spec,
                          &PyTuple_Type, &sources, &positions))
        return NULL;
    Py_ssize_t fields = PyTuple_GET_SIZE(spec), nsources = PyTuple_GET_SIZE(sources);
    if (nsources < 1 || fields > 64 || !PyList_Check(PyTuple_GET_ITEM(sources, 0))) return fallback();
    PyObject *field_source[64], *field_key[64];
    for (Py_ssize_t f = 0; f < fields; f++) {
        PyObject *entry = PyTuple_GET_ITEM(spec, f);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 || !PyLong_Check(PyTuple_GET_ITEM(entry, 0)))
            return fallback();
        Py_ssize_t s = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 0));
        PyObject *k = PyTuple_GET_ITEM(entry, 1);
        if (s < 0 || s >= nsources || !PyList_Check(PyTuple_GET_ITEM(sources, s)) ||
            (k != Py_None && !PyUnicode_CheckExact(k)))
            return fallback();
        field_source[f] = PyTuple_GET_ITEM(sources, s);
        field_key[f] = k;
    }
    Py_INCREF(sources);  /* holds the lists while compute() runs */
    Py_ssize_t count = positions == Py_None ? PyList_GET_SIZE(PyTuple_GET_ITEM(sources, 0))
                       : PyList_Check(positions) ? PyList_GET_SIZE(positions) : -1;
    PyObject *out = count >= 0 ? PyList_New(count) : NULL, *result = NULL, *key = NULL;
    if (count < 0) goto unexpected;
    if (!out) goto done;
    for (Py_ssize_t j = 0; j < count; j++) {
        Py_ssize_t i = j;
        if (positions != Py_None) {
            PyObject *p = item(positions, j);
            if (!p || !PyLong_CheckExact(p)) goto unexpected;
            i = PyLong_AsSsize_t(p);
            if (i == -1 && PyErr_Occurred()) goto unexpected;
        }
        key = PyTuple_New(fields);
        if (!key) goto done;
        for (Py_ssize_t f = 0; f < fields; f++) {
            PyObject *v = item(field_source[f], i);
            if (!v) goto unexpected;
            if (field_key[f] != Py_None) {
                if (!PyDict_Check(v)) goto unexpected;
                v = dict_get(v, field_key[f]);
                if (!v) goto unexpected;
            }
            Py_INCREF(v);
            PyTuple_SET_ITEM(key, f, v);
        }
        PyObject *value = NULL;
        Py_hash_t hash = PyObject_Hash(key);
        if (hash == -1) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) goto unexpected;
            PyErr_Clear();  /* an unhashable value (a list attribute): computed, not memoised */
        } else {
            /* public API (the private _PyDict_*_KnownHash calls may change in any release): the key is hashed
             * again, a tuple of mostly cached str hashes, within the bench's noise (docs/performance.md) */
            value = PyDict_GetItemWithError(memo, key);
            if (!value && PyErr_Occurred()) goto unexpected;
            Py_XINCREF(value);
        }
        if (!value) {
            value = PyObject_CallFunction(compute, "n", i);
            if (!value) goto unexpected;
            if (hash != -1) {
                if (PyDict_GET_SIZE(memo) >= limit) PyDict_Clear(memo);
                if (PyDict_SetItem(memo, key, value) < 0) { Py_DECREF(value); goto unexpected; }
            }
        }
        Py_CLEAR(key);
        PyList_SET_ITEM(out, j, value);
    }
    result = out;
    out = NULL;
    goto done;
unexpected:
    result = fallback();
done:
    Py_XDECREF(key);
    Py_XDECREF(out);
    Py_DECREF(sources);
    return result;
}

/* ---- node_domains(nodes, pods) : trace_domains' first rule -------------------------------------------------
 * (own, pod_nodes, pending): own[i] = str(nodes[i]) where a node is named, else None (and i is pending);
 * pod_nodes = {str(pod): str(node)} where both are named. */

static PyObject *node_domains(PyObject *self, PyObject *args) {
    PyObject *nodes, *pods;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &nodes, &PyList_Type, &pods)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(nodes);
    if (!is_list_of(pods, n)) return fallback();
    PyObject *own = PyList_New(n), *pod_nodes = PyDict_New(), *pending = PyList_New(0), *result = NULL;
    if (!own || !pod_nodes || !pending) goto done;
    Py_INCREF(nodes); Py_INCREF(pods);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *node = item(nodes, i), *pod = item(pods, i);
        if (!node || !pod || (node != Py_None && !PyUnicode_CheckExact(node)) ||
            (pod != Py_None && !PyUnicode_CheckExact(pod)))
            goto unexpected;  /* str() of other values: the reference */
        int has_node = node != Py_None && PyUnicode_GET_LENGTH(node) > 0;
        int has_pod = pod != Py_None && PyUnicode_GET_LENGTH(pod) > 0;
        PyObject *domain = NULL;
        if (has_node) {
            domain = Py_NewRef(node);  /* str(a str) is itself */
            if (has_pod && PyDict_SetItem(pod_nodes, pod, domain) < 0) {
                Py_DECREF(domain);
                goto unexpected;
            }
        } else {
            PyObject *at = PyLong_FromSsize_t(i);
            if (!at || PyList_Append(pending, at) < 0) { Py_XDECREF(at); goto unexpected; }
            Py_DECREF(at);
            domain = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(own, i, domain);
    }
    result = PyTuple_Pack(3, own, pod_nodes, pending);
    goto release;
unexpected:
    result = fallback();
release:
    Py_DECREF(nodes); Py_DECREF(pods);
done:
    Py_XDECREF(own); Py_XDECREF(pod_nodes); Py_XDECREF(pending);
    return result;
}

/* ---- path(...) : span_tree + critical_path + PathLabeller.label over the path ------------------------------- */

typedef struct {
    Py_ssize_t n;
    int64_t *s, *e, *cs, *ce;      /* given (skew-corrected) and clipped times; index n: the virtual root */
    Py_ssize_t *par;               /* parent position or -1 */
    PyObject **ids;                /* borrowed, exact str */
    Py_ssize_t *off, *kids;        /* synchronous children (CSR over n + 1); after clipping, latest end first */
    Py_ssize_t *cursor;            /* per parent: its next child the walk may take (critical_path._Candidates) */
    Py_ssize_t *aoff, *akids;      /* every child (asynchronous too), by position: TraceHops.children */
    unsigned char *reached, *failed, *bits;
    int64_t *window;               /* per span: retry window (2 values) when has_window */
    unsigned char *has_window;
    Py_ssize_t *wire_off; int64_t *wire;  /* per outbound span: its sorted wire intervals (pairs) */
} Tree;

static const int64_t *SORT_TIMES, *SORT_STARTS;  /* qsort context (the GIL is held throughout) */
static PyObject *const *SORT_IDS;

static int by_time_then_id(const void *x, const void *y) {
    Py_ssize_t a = *(const Py_ssize_t *)x, b = *(const Py_ssize_t *)y;
    if (SORT_TIMES[a] != SORT_TIMES[b]) return SORT_TIMES[a] < SORT_TIMES[b] ? -1 : 1;
    return PyUnicode_Compare(SORT_IDS[a], SORT_IDS[b]);  /* exact str: cannot fail; ids are unique */
}

static void sort_by(Py_ssize_t *v, Py_ssize_t count, const int64_t *times, PyObject *const *ids) {
    SORT_TIMES = times;
    SORT_IDS = ids;
    if (count > 1) qsort(v, (size_t)count, sizeof(Py_ssize_t), by_time_then_id);
}

/* the walk's order of a parent's children: latest (clipped) end first, then earliest start, then smallest id */
static int by_end_latest_first(const void *x, const void *y) {
    Py_ssize_t a = *(const Py_ssize_t *)x, b = *(const Py_ssize_t *)y;
    if (SORT_TIMES[a] != SORT_TIMES[b]) return SORT_TIMES[a] > SORT_TIMES[b] ? -1 : 1;
    if (SORT_STARTS[a] != SORT_STARTS[b]) return SORT_STARTS[a] < SORT_STARTS[b] ? -1 : 1;
    return PyUnicode_Compare(SORT_IDS[a], SORT_IDS[b]);
}

static int cmp_pairs(const void *x, const void *y) {
    const int64_t *a = x, *b = y;
    if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
    return a[1] < b[1] ? -1 : a[1] > b[1];
}

static int add_flag(PyObject *flags, Py_ssize_t i, PyObject *text) {
    if (!text) return -1;
    PyObject *key = PyLong_FromSsize_t(i), *list = key ? PyList_New(1) : NULL;
    if (!list) { Py_XDECREF(key); Py_DECREF(text); return -1; }
    PyList_SET_ITEM(list, 0, text);
    int rc = PyDict_SetItem(flags, key, list);
    Py_DECREF(key);
    Py_DECREF(list);
    return rc;
}

typedef struct { int64_t a, b; PyObject *c; } Piece;

/* path_labels._split: relabel the parts of pieces inside the sorted intervals as `inside` (only those labelled
 * `only`, when given). `out` holds at least count * (2 * nint + 1) pieces. */
static Py_ssize_t split(const Piece *in, Py_ssize_t count, const int64_t *intervals, Py_ssize_t nint,
                        PyObject *inside, PyObject *only, Piece *out) {
    Py_ssize_t m = 0;
    for (Py_ssize_t p = 0; p < count; p++) {
        if (only != NULL && in[p].c != only && PyUnicode_Compare(in[p].c, only) != 0) {
            out[m++] = in[p];
            continue;
        }
        int64_t cursor = in[p].a, b = in[p].b;
        for (Py_ssize_t k = 0; k < nint; k++) {
            int64_t low = intervals[2 * k] > cursor ? intervals[2 * k] : cursor;
            int64_t high = intervals[2 * k + 1] < b ? intervals[2 * k + 1] : b;
            if (high <= low) continue;
            out[m++] = (Piece){cursor, low, in[p].c};
            out[m++] = (Piece){low, high, inside};
            cursor = high;
        }
        out[m++] = (Piece){cursor, b, in[p].c};
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t p = 0; p < m; p++)
        if (out[p].b > out[p].a) out[kept++] = out[p];
    return kept;
}

static PyObject *new_segment(PyTypeObject *type, PyObject *span_id, PyObject *service, PyObject *component,
                             int64_t a, int64_t b) {
    PyObject *low = PyLong_FromLongLong(a), *high = PyLong_FromLongLong(b);
    if (!low || !high) { Py_XDECREF(low); Py_XDECREF(high); return NULL; }
    PyObject *segment = type->tp_alloc(type, 5);  /* as tuple.__new__(Segment, ...) does */
    if (!segment) { Py_DECREF(low); Py_DECREF(high); return NULL; }
    PyTuple_SET_ITEM(segment, 0, Py_NewRef(span_id));
    PyTuple_SET_ITEM(segment, 1, Py_NewRef(service));
    PyTuple_SET_ITEM(segment, 2, Py_NewRef(component));
    PyTuple_SET_ITEM(segment, 3, low);
    PyTuple_SET_ITEM(segment, 4, high);
    return segment;
}

typedef struct {
    Tree *t;
    PyObject *roles, *services, *canonicals, *node_ids, *apps, *compute, *memo;
    PyObject **cache;  /* per position: its service (owned) */
} Services;

/* path_labels.service_at: service_of on the span (on its parent for an agent's layer span); memoised on what
 * service_of reads when all of it is str or None (str() of equal keys of other types can differ). */
static PyObject *service_at(Services *sv, Py_ssize_t span) {
    if (sv->cache[span]) return sv->cache[span];
    Py_ssize_t subject = (sv->t->bits[span] & R_LAYER) && sv->t->par[span] >= 0 ? sv->t->par[span] : span;
    PyObject *role = item(sv->roles, subject), *service = item(sv->services, subject);
    if (!role || !service) return NULL;
    PyObject *canonical = Py_None, *node_id = Py_None, *app = Py_None;
    int fields = 2;
    if (!(sv->t->bits[subject] & R_APP)) {  /* a proxy's span: named by its attributes */
        canonical = item(sv->canonicals, subject);
        node_id = item(sv->node_ids, subject);
        app = item(sv->apps, subject);
        if (!canonical || !node_id || !app) return NULL;
        fields = 5;
    }
    PyObject *parts[] = {role, service, canonical, node_id, app};
    int plain = 1;
    for (int k = 0; k < 5; k++) plain &= parts[k] == Py_None || PyUnicode_CheckExact(parts[k]);
    PyObject *key = !plain ? NULL : fields == 2 ? PyTuple_Pack(2, role, service)
                                                : PyTuple_Pack(5, role, service, canonical, node_id, app);
    PyObject *value = NULL;
    if (plain && !key) return NULL;
    if (key) {
        value = PyDict_GetItemWithError(sv->memo, key);
        if (!value && PyErr_Occurred()) { Py_DECREF(key); return NULL; }
        Py_XINCREF(value);
    }
    if (!value) {
        value = PyObject_CallFunction(sv->compute, "n", subject);
        if (value && !PyUnicode_Check(value)) Py_CLEAR(value);
        if (value && key && PyDict_SetItem(sv->memo, key, value) < 0) Py_CLEAR(value);
    }
    Py_XDECREF(key);
    sv->cache[span] = value;
    return value;
}

/* Labels on the path's sections, appended to out (PathLabeller.label). */
static int label(Tree *t, Services *sv, PyObject **component, PyTypeObject *segment_type, Py_ssize_t owner,
                 int64_t low, int64_t high, PyObject *out, Piece *buffer, Piece *spare) {
    PyObject *segment;
    if (owner == t->n) {
        segment = new_segment(segment_type, Py_None, Py_None, C_untraced, low, high);
        goto append_one;
    }
    PyObject *service = service_at(sv, owner);
    if (!service) return -1;
    if (t->failed[owner]) {
        segment = new_segment(segment_type, t->ids[owner], service, C_retry, low, high);
        goto append_one;
    }
    Py_ssize_t nwire = t->wire_off[owner + 1] - t->wire_off[owner];
    if (!t->has_window[owner] && nwire == 0) {
        if (high <= low) return 0;
        segment = new_segment(segment_type, t->ids[owner], service, component[owner], low, high);
        goto append_one;
    }
    Py_ssize_t count = 1;
    buffer[0] = (Piece){low, high, component[owner]};
    if (t->has_window[owner]) {
        count = split(buffer, count, &t->window[2 * owner], 1, C_retry, NULL, spare);
        memcpy(buffer, spare, (size_t)count * sizeof(Piece));
    }
    if (nwire) {
        for (Py_ssize_t p = 0; p < count; p++)
            if (buffer[p].c == C_network || PyUnicode_Compare(buffer[p].c, C_network) == 0) buffer[p].c = C_proxy;
        count = split(buffer, count, &t->wire[2 * t->wire_off[owner]], nwire, C_network, C_proxy, spare);
        memcpy(buffer, spare, (size_t)count * sizeof(Piece));
    }
    for (Py_ssize_t p = 0; p < count; p++) {
        segment = new_segment(segment_type, t->ids[owner], service, buffer[p].c, buffer[p].a, buffer[p].b);
        if (!segment || PyList_Append(out, segment) < 0) { Py_XDECREF(segment); return -1; }
        Py_DECREF(segment);
    }
    return 0;
append_one:
    if (!segment || PyList_Append(out, segment) < 0) { Py_XDECREF(segment); return -1; }
    Py_DECREF(segment);
    return 0;
}

static int kids_with(Tree *t, Py_ssize_t span, int bits, Py_ssize_t *out) {
    Py_ssize_t m = 0;
    for (Py_ssize_t k = t->aoff[span]; k < t->aoff[span + 1]; k++)
        if (t->bits[t->akids[k]] & bits) out[m++] = t->akids[k];
    return (int)m;
}

/* PathLabeller.__init__: components of clients and outbound spans, retry windows, failed attempts, wires. */
static int labeller(Tree *t, PyObject **component, Py_ssize_t *scratch, Py_ssize_t *stack) {
    Py_ssize_t n = t->n, nwire = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        t->wire_off[i] = nwire;
        if (t->bits[i] & R_APP_CLIENT) {
            if (!kids_with(t, i, R_OUTBOUND, scratch)) component[i] = C_network;
            else component[i] = kids_with(t, i, R_LAYER_IPTABLES, scratch) ? C_proxy : C_iptables;
            continue;
        }
        if (!(t->bits[i] & R_OUTBOUND)) continue;
        Py_ssize_t upstream = kids_with(t, i, R_UPSTREAM, scratch);
        Py_ssize_t attempts = upstream ? upstream : kids_with(t, i, R_CALLEE, scratch);
        if (attempts > 1) {
            sort_by(scratch, attempts, t->s, t->ids);  /* TraceHops.kids: by corrected start, then span id */
            t->has_window[i] = 1;
            t->window[2 * i] = t->cs[scratch[0]];
            t->window[2 * i + 1] = t->cs[scratch[attempts - 1]];
            for (Py_ssize_t a = 0; a < attempts - 1; a++) {
                Py_ssize_t depth = 0;
                stack[depth++] = scratch[a];
                while (depth) {  /* the failed attempt and everything below it; each span once */
                    Py_ssize_t current = stack[--depth];
                    if (t->failed[current]) continue;
                    t->failed[current] = 1;
                    for (Py_ssize_t k = t->aoff[current]; k < t->aoff[current + 1]; k++)
                        if (!t->failed[t->akids[k]]) stack[depth++] = t->akids[k];
                }
            }
        }
        if (upstream) {
            component[i] = C_proxy;
            continue;
        }
        component[i] = C_network;
        Py_ssize_t p = t->par[i];
        if (p >= 0) {
            Py_ssize_t count = kids_with(t, p, R_LAYER_NETWORK, scratch);
            if (count) {
                int64_t *grown = PyMem_Realloc(t->wire, (size_t)(nwire + count) * 2 * sizeof(int64_t));
                if (!grown) { PyErr_NoMemory(); return -1; }
                t->wire = grown;
                for (Py_ssize_t k = 0; k < count; k++) {
                    t->wire[2 * (nwire + k)] = t->cs[scratch[k]];
                    t->wire[2 * (nwire + k) + 1] = t->ce[scratch[k]];
                }
                qsort(&t->wire[2 * nwire], (size_t)count, 2 * sizeof(int64_t), cmp_pairs);
                nwire += count;
            }
        }
    }
    t->wire_off[n] = nwire;
    t->wire_off[n + 1] = nwire;
    return 0;
}

static int is_ascii(PyObject *s, const char *text) {
    return PyUnicode_CheckExact(s) && PyUnicode_GET_LENGTH(s) == (Py_ssize_t)strlen(text) &&
           PyUnicode_CompareWithASCIIString(s, text) == 0;
}

/* path(ids, parent_ids, parent, start, end, kinds, follows_from, roles, bits, own, services, canonical_services,
 *      node_ids, apps, service_of, segment_type): the last three columns are what hops.service_of reads
 * -> (segments, flags, root, roots, first, top_start, top_end) or None. root: a position, n (the virtual root over
 * several roots) or -1; flags {position: [text]} as IndexedTree.flags; first: the (first) root's position or -1;
 * top: the root's interval (0, 0 without one). */
static PyObject *path(PyObject *self, PyObject *args) {
    PyObject *ids, *parent_ids, *parent, *start, *end, *kinds, *follows, *roles, *bits, *own, *services,
        *canonicals, *node_ids, *apps, *compute;
    PyTypeObject *segment_type;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOO!", &ids, &parent_ids, &parent, &start, &end, &kinds, &follows,
                          &roles, &bits, &own, &services, &canonicals, &node_ids, &apps, &compute, &PyType_Type,
                          &segment_type))
        return NULL;
    if (!configured || !PyList_CheckExact(ids)) return fallback();
    Py_ssize_t n = PyList_GET_SIZE(ids);
    PyObject *lists[] = {parent_ids, parent, start, end, kinds, follows, roles, bits, own, services, canonicals,
                         node_ids, apps};
    for (int k = 0; k < 13; k++)
        if (!is_list_of(lists[k], n)) return fallback();
    if (!PyType_IsSubtype(segment_type, &PyTuple_Type) || segment_type->tp_basicsize != PyTuple_Type.tp_basicsize ||
        segment_type->tp_itemsize != PyTuple_Type.tp_itemsize || n >= PY_SSIZE_T_MAX / 16)
        return fallback();

    Tree t = {0};
    t.n = n;
    size_t m = (size_t)n + 2;
    t.s = PyMem_Calloc(m, sizeof(int64_t)); t.e = PyMem_Calloc(m, sizeof(int64_t));
    t.cs = PyMem_Calloc(m, sizeof(int64_t)); t.ce = PyMem_Calloc(m, sizeof(int64_t));
    t.par = PyMem_Calloc(m, sizeof(Py_ssize_t)); t.ids = PyMem_Calloc(m, sizeof(PyObject *));
    t.off = PyMem_Calloc(m + 1, sizeof(Py_ssize_t)); t.kids = PyMem_Calloc(m, sizeof(Py_ssize_t));
    t.cursor = PyMem_Calloc(m, sizeof(Py_ssize_t));
    t.aoff = PyMem_Calloc(m + 1, sizeof(Py_ssize_t)); t.akids = PyMem_Calloc(m, sizeof(Py_ssize_t));
    t.reached = PyMem_Calloc(m, 1); t.failed = PyMem_Calloc(m, 1); t.bits = PyMem_Calloc(m, 1);
    t.has_window = PyMem_Calloc(m, 1);
    t.window = PyMem_Calloc(2 * m, sizeof(int64_t)); t.wire_off = PyMem_Calloc(m + 1, sizeof(Py_ssize_t));
    t.wire = PyMem_Malloc(2 * sizeof(int64_t));
    Py_ssize_t *order = PyMem_Calloc(m, sizeof(Py_ssize_t)), *roots = PyMem_Calloc(m, sizeof(Py_ssize_t));
    Py_ssize_t *stack = PyMem_Calloc(m, sizeof(Py_ssize_t)), *scratch = PyMem_Calloc(m, sizeof(Py_ssize_t));
    int64_t *points = PyMem_Calloc(m, sizeof(int64_t));
    unsigned char *linked = PyMem_Calloc(m, 1), *consumer = PyMem_Calloc(m, 1), *producer = PyMem_Calloc(m, 1);
    PyObject **component = PyMem_Calloc(m, sizeof(PyObject *)), **cache = PyMem_Calloc(m, sizeof(PyObject *));
    Py_ssize_t cap = 2 * (Py_ssize_t)m + 8, nsec = 0;
    Py_ssize_t *owners = PyMem_Calloc((size_t)cap, sizeof(Py_ssize_t));
    int64_t *lows = PyMem_Calloc((size_t)cap, sizeof(int64_t)), *highs = PyMem_Calloc((size_t)cap, sizeof(int64_t));
    Piece *buffer = NULL, *spare = NULL;
    PyObject *flags = PyDict_New(), *segments = PyList_New(0), *memo = PyDict_New(), *result = NULL;
    Services sv = {&t, roles, services, canonicals, node_ids, apps, compute, memo, cache};
    if (!t.s || !t.e || !t.cs || !t.ce || !t.par || !t.ids || !t.off || !t.kids || !t.cursor || !t.aoff ||
        !t.akids || !t.reached || !t.failed || !t.bits || !t.has_window || !t.window || !t.wire_off || !t.wire ||
        !order || !roots || !stack || !scratch || !points || !linked || !consumer || !producer || !component ||
        !cache || !owners || !lows || !highs) {
        PyErr_NoMemory();
        goto done;
    }
    if (!flags || !segments || !memo) goto done;
    Py_INCREF(ids); Py_INCREF(roles); Py_INCREF(services); Py_INCREF(canonicals); Py_INCREF(node_ids);
    Py_INCREF(apps);

    /* read and check every column */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = PyList_GET_ITEM(ids, i), *p = PyList_GET_ITEM(parent, i), *kind = PyList_GET_ITEM(kinds, i);
        PyObject *b = PyList_GET_ITEM(bits, i), *c = PyList_GET_ITEM(own, i);
        if (!PyUnicode_CheckExact(id) || !PyLong_CheckExact(p) || !PyUnicode_CheckExact(kind) ||
            !PyLong_CheckExact(b) || !PyUnicode_CheckExact(c) || !PyUnicode_CheckExact(PyList_GET_ITEM(roles, i)))
            goto unexpected;
        t.ids[i] = id;
        t.par[i] = PyLong_AsSsize_t(p);
        if (t.par[i] == -1 && PyErr_Occurred()) goto unexpected;  /* overflow: -1 with an error set */
        long code = PyLong_AsLong(b);
        if (t.par[i] < -1 || t.par[i] >= n || code < 0 || code > 255) goto unexpected;
        t.bits[i] = (unsigned char)code;
        component[i] = c;
        consumer[i] = is_ascii(kind, "CONSUMER");
        producer[i] = is_ascii(kind, "PRODUCER");
    }
    if (read_times(start, n, t.s) < 0 || read_times(end, n, t.e) < 0) goto unexpected;
    memcpy(t.cs, t.s, (size_t)n * sizeof(int64_t));
    memcpy(t.ce, t.e, (size_t)n * sizeof(int64_t));

    /* roots, asynchronous links and each parent's synchronous children, in (start, span id) order */
    for (Py_ssize_t i = 0; i < n; i++) order[i] = i;
    sort_by(order, n, t.s, t.ids);
    Py_ssize_t nroots = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = order[k], p = t.par[i];
        if (p < 0) {
            roots[nroots++] = i;
            PyObject *pid = item(parent_ids, i);  /* bounds-checked and held: IsTrue may run Python code */
            Py_XINCREF(pid);
            int truthy = pid ? PyObject_IsTrue(pid) : -1;
            if (truthy > 0 && add_flag(flags, i, PyUnicode_FromFormat("orphan: parent %S is not in the trace; "
                                                                      "promoted to a root", pid)) < 0)
                truthy = -1;
            Py_XDECREF(pid);
            if (truthy < 0) goto unexpected;
            continue;
        }
        PyObject *follows_i = item(follows, i);
        int follows_from = follows_i ? PyObject_IsTrue(follows_i) : -1;
        if (follows_from < 0) goto unexpected;
        if (follows_from || (consumer[i] && producer[p])) {
            if (add_flag(flags, i, PyUnicode_FromString("asynchronous (FOLLOWS_FROM or CONSUMER under PRODUCER): "
                                                        "off the path")) < 0)
                goto unexpected;
            continue;
        }
        linked[i] = 1;
        t.off[p + 1]++;
    }
    t.off[n + 1] = nroots;  /* the virtual root's children: the roots, in (start, span id) order */
    for (Py_ssize_t p = 0; p <= n; p++) t.off[p + 1] += t.off[p];
    {
        Py_ssize_t *fill = scratch;
        memcpy(fill, t.off, (size_t)(n + 1) * sizeof(Py_ssize_t));
        for (Py_ssize_t k = 0; k < n; k++)
            if (linked[order[k]]) t.kids[fill[t.par[order[k]]]++] = order[k];
        for (Py_ssize_t r = 0; r < nroots; r++) t.kids[t.off[n] + r] = roots[r];
    }
    /* every child by position (TraceHops.children), for the labeller */
    for (Py_ssize_t i = 0; i < n; i++)
        if (t.par[i] >= 0) t.aoff[t.par[i] + 1]++;
    for (Py_ssize_t p = 0; p <= n; p++) t.aoff[p + 1] += t.aoff[p];
    memcpy(scratch, t.aoff, (size_t)(n + 1) * sizeof(Py_ssize_t));
    for (Py_ssize_t i = 0; i < n; i++)
        if (t.par[i] >= 0) t.akids[scratch[t.par[i]]++] = i;

    Py_ssize_t root = -1, first = nroots ? roots[0] : -1;
    if (nroots == 1) root = roots[0];
    else if (nroots > 1) {
        root = n;
        t.cs[n] = t.s[roots[0]];
        t.ce[n] = t.e[roots[0]];
        for (Py_ssize_t r = 1; r < nroots; r++) {
            if (t.s[roots[r]] < t.cs[n]) t.cs[n] = t.s[roots[r]];
            if (t.e[roots[r]] > t.ce[n]) t.ce[n] = t.e[roots[r]];
        }
    }
    if (nroots) {
        /* top-down clipping (critical_path._clip_descendants), with an explicit stack */
        Py_ssize_t depth = 0;
        for (Py_ssize_t r = 0; r < nroots; r++) {
            t.reached[roots[r]] = 1;
            stack[depth++] = roots[r];
        }
        while (depth) {
            Py_ssize_t p = stack[--depth];
            int64_t low = t.cs[p], high = t.ce[p];
            for (Py_ssize_t k = t.off[p]; k < t.off[p + 1]; k++) {
                Py_ssize_t kid = t.kids[k];
                if (t.reached[kid]) continue;  /* a parent cycle in malformed data: visit once */
                int64_t s = t.s[kid], e = t.e[kid], a = s, b = e;
                if (!(low <= s && s <= e && e <= high)) {  /* else: inside its parent, well-formed */
                    a = s < low ? low : s; a = a > high ? high : a;
                    b = e < low ? low : e; b = b > high ? high : b;
                    PyObject *text = NULL;
                    if (b - a == 0 && 0 < e - s)
                        text = PyUnicode_FromString("outside its parent: clipped to a zero-length edge of the parent");
                    else if (s < low)
                        text = PyUnicode_FromFormat("starts %lld ns before its parent: clipped", (long long)(low - s));
                    else if (e > high)
                        text = PyUnicode_FromFormat("ends %lld ns after its parent: clipped", (long long)(e - high));
                    if (text && add_flag(flags, kid, text) < 0) goto unexpected;
                    if (!text && PyErr_Occurred()) goto unexpected;
                }
                t.cs[kid] = a;
                t.ce[kid] = a > b ? a : b;
                t.reached[kid] = 1;
                stack[depth++] = kid;
            }
        }
        SORT_TIMES = t.ce;
        SORT_STARTS = t.cs;
        SORT_IDS = t.ids;
        for (Py_ssize_t p = 0; p <= n; p++) {
            Py_ssize_t count = t.off[p + 1] - t.off[p];
            if (count > 1) qsort(&t.kids[t.off[p]], (size_t)count, sizeof(Py_ssize_t), by_end_latest_first);
            t.cursor[p] = t.off[p];
        }
        /* the walk (critical_path.critical_path): the last child to end at or before the point, not yet taken */
        depth = 0;
        stack[depth] = root;
        points[depth++] = t.ce[root];
        while (depth) {
            Py_ssize_t span = stack[depth - 1], child = -1;
            int64_t point = points[depth - 1];
            if (span == n || t.reached[span]) {
                /* the points at which the walk returns to a span only decrease: a child passed over stays so */
                Py_ssize_t k = t.cursor[span], hi = t.off[span + 1];
                while (k < hi && t.ce[t.kids[k]] > point) k++;
                if (k < hi) child = t.kids[k++];
                t.cursor[span] = k;
            }
            if (nsec + 2 > cap) goto unexpected;  /* cannot happen: each span is entered once */
            if (child < 0) {
                int64_t low = t.cs[span];
                if (point > low) {
                    owners[nsec] = span; lows[nsec] = low; highs[nsec++] = point;
                }
                depth--;
                if (depth) points[depth - 1] = low;  /* the parent resumes where this child started */
                continue;
            }
            int64_t child_end = t.ce[child];
            if (point > child_end) {
                owners[nsec] = span; lows[nsec] = child_end; highs[nsec++] = point;
            }
            if (depth >= (Py_ssize_t)m) goto unexpected;
            stack[depth] = child;
            points[depth++] = child_end;
        }
    }
    /* labels */
    if (labeller(&t, component, scratch, stack) < 0) goto unexpected;
    Py_ssize_t most_wire = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (t.wire_off[i + 1] - t.wire_off[i] > most_wire) most_wire = t.wire_off[i + 1] - t.wire_off[i];
    buffer = PyMem_Calloc((size_t)(6 * most_wire + 8), sizeof(Piece));
    spare = PyMem_Calloc((size_t)(6 * most_wire + 8), sizeof(Piece));
    if (!buffer || !spare) { PyErr_NoMemory(); goto unexpected; }
    for (Py_ssize_t k = nsec - 1; k >= 0; k--)
        if (label(&t, &sv, component, segment_type, owners[k], lows[k], highs[k], segments, buffer, spare) < 0)
            goto unexpected;
    result = Py_BuildValue("(OOnnnLL)", segments, flags, root, nroots, first, (long long)(root >= 0 ? t.cs[root] : 0),
                           (long long)(root >= 0 ? t.ce[root] : 0));
    goto release;
unexpected:
    result = fallback();
release:
    Py_DECREF(ids); Py_DECREF(roles); Py_DECREF(services); Py_DECREF(canonicals); Py_DECREF(node_ids);
    Py_DECREF(apps);
done:
    if (cache)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(cache[i]);
    Py_XDECREF(flags); Py_XDECREF(segments); Py_XDECREF(memo);
    PyMem_Free(t.s); PyMem_Free(t.e); PyMem_Free(t.cs); PyMem_Free(t.ce); PyMem_Free(t.par); PyMem_Free(t.ids);
    PyMem_Free(t.off); PyMem_Free(t.kids); PyMem_Free(t.cursor); PyMem_Free(t.aoff); PyMem_Free(t.akids);
    PyMem_Free(t.reached); PyMem_Free(t.failed); PyMem_Free(t.bits);
    PyMem_Free(t.has_window); PyMem_Free(t.window); PyMem_Free(t.wire_off); PyMem_Free(t.wire);
    PyMem_Free(order); PyMem_Free(roots); PyMem_Free(stack); PyMem_Free(scratch); PyMem_Free(points);
    PyMem_Free(linked); PyMem_Free(consumer); PyMem_Free(producer); PyMem_Free(component); PyMem_Free(cache);
    PyMem_Free(owners); PyMem_Free(lows); PyMem_Free(highs); PyMem_Free(buffer); PyMem_Free(spare);
    return result;
}

/* ---- the JSON body's columns ---------------------------------------------------------------------------- */

static int read_segment(PyObject *segment, PyObject **parts, int64_t *a, int64_t *b) {
    if (!PyTuple_Check(segment) || PyTuple_GET_SIZE(segment) != 5) return -1;
    for (int k = 0; k < 5; k++) parts[k] = PyTuple_GET_ITEM(segment, k);
    if (as_time(parts[3], a) < 0 || as_time(parts[4], b) < 0) return -1;
    return 0;
}

typedef struct { char *data; size_t used, size; } Text;

static int put(Text *t, const char *bytes, size_t count) {
    if (t->used + count > t->size) {
        size_t size = t->size ? t->size : 4096;
        while (t->used + count > size) size *= 2;
        char *grown = PyMem_Realloc(t->data, size);
        if (!grown) { PyErr_NoMemory(); return -1; }
        t->data = grown;
        t->size = size;
    }
    memcpy(t->data + t->used, bytes, count);
    t->used += count;
    return 0;
}

static int put_literal(Text *t, const char *text) { return put(t, text, strlen(text)); }

#define INT64_CHARS 20 /* the longest int64 written: "-9223372036854775808" */

static char *write_int(char *out, int64_t v) {
    char digits[24];
    int k = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do { digits[k++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) *out++ = '-';
    while (k) *out++ = digits[--k];
    return out;
}

/* A value as orjson writes it: null, a plain ASCII string verbatim, anything else by orjson.dumps itself. */
static int put_value(Text *t, PyObject *value, PyObject *dumps) {
    if (value == Py_None) return put_literal(t, "null");
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        const char *chars = (const char *)PyUnicode_DATA(value);
        Py_ssize_t length = PyUnicode_GET_LENGTH(value), k = 0;
        while (k < length && chars[k] >= 0x20 && chars[k] != '"' && chars[k] != '\\') k++;
        if (k == length)
            return put(t, "\"", 1) < 0 || put(t, chars, (size_t)length) < 0 || put(t, "\"", 1) < 0 ? -1 : 0;
    }
    PyObject *written = PyObject_CallOneArg(dumps, value);
    if (!written) return -1;
    int rc = PyBytes_Check(written) ? put(t, PyBytes_AS_STRING(written), (size_t)PyBytes_GET_SIZE(written)) : -1;
    Py_DECREF(written);
    return rc;
}

/* sections_body(segments, names, dumps) -> the JSON text of critical_path_api.sections_json(segments, names) as
 * orjson.dumps writes it, or None (durations outside [0, 2^43) ns: the reference writes those). duration_ms is
 * round(ns / 1e6, 3): q / 1000 for a whole q, decided exactly (half-even on exact ties, as Python's round), and
 * written as orjson writes that float below 1e16: its decimal digits, trailing zeros dropped, at least one. */
static PyObject *sections_body(PyObject *self, PyObject *args) {
    PyObject *segments, *names, *dumps;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyList_Type, &segments, &PyDict_Type, &names, &dumps)) return NULL;
    int empty_named = PyDict_Contains(names, S_empty);
    if (empty_named < 0) return fallback();
    Text t = {NULL, 0, 0};
    /* the tail of one section: three ints of at most INT64_CHARS each, their keys, '.', three digits and '}' */
    char number[128];
    _Static_assert(sizeof(number) >= 17 + 15 + 15 + 3 * INT64_CHARS + 5, "sections_body: number[] too small");
    Py_INCREF(segments);
    if (put(&t, "[", 1) < 0) goto unexpected;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(segments); i++) {
        PyObject *parts[5];
        int64_t a, b;
        PyObject *segment = item(segments, i);
        if (!segment || read_segment(segment, parts, &a, &b) < 0) goto unexpected;
        int64_t ns = b - a;
        if (ns < 0 || ns >= ((int64_t)1 << 43)) goto unexpected;
        int64_t q = ns / 1000, r = ns % 1000;
        if (r > 500) q += 1;
        else if (r == 500) {
            double x = (double)ns / 1e6, side = fma(x, 1e6, -(double)ns);
            if (side > 0 || (side == 0 && (q & 1))) q += 1;
        }
        Py_INCREF(segment);  /* a dumps() call may run Python code */
        PyObject *key = parts[0];
        int failed = 0;
        if (empty_named) {
            int truthy = PyObject_IsTrue(key);
            failed = truthy < 0;
            if (!truthy) key = S_empty;
        }
        PyObject *name = failed ? NULL : dict_get(names, key);
        Py_XINCREF(name);
        failed = failed || !name || put_literal(&t, i ? ",{\"span_id\":" : "{\"span_id\":") < 0 ||
                 put_value(&t, parts[0], dumps) < 0 || put_literal(&t, ",\"name\":") < 0 ||
                 put_value(&t, name, dumps) < 0 || put_literal(&t, ",\"service\":") < 0 ||
                 put_value(&t, parts[1], dumps) < 0 || put_literal(&t, ",\"component\":") < 0 ||
                 put_value(&t, parts[2], dumps) < 0;
        Py_XDECREF(name);
        Py_DECREF(segment);
        if (failed) goto unexpected;
        char *end = number;
        memcpy(end, ",\"start_unix_us\":", 17); end += 17;
        end = write_int(end, floor_div(a, 1000));
        memcpy(end, ",\"end_unix_us\":", 15); end += 15;
        end = write_int(end, floor_div(b, 1000));
        memcpy(end, ",\"duration_ms\":", 15); end += 15;
        end = write_int(end, q / 1000);
        int64_t fraction = q % 1000;  /* three digits, trailing zeros dropped, at least one kept */
        *end++ = '.';
        *end++ = (char)('0' + fraction / 100);
        if (fraction % 100) {
            *end++ = (char)('0' + fraction / 10 % 10);
            if (fraction % 10) *end++ = (char)('0' + fraction % 10);
        }
        *end++ = '}';
        if (put(&t, number, (size_t)(end - number)) < 0) goto unexpected;
    }
    if (put(&t, "]", 1) < 0) goto unexpected;
    PyObject *body = PyBytes_FromStringAndSize(t.data, (Py_ssize_t)t.used);
    PyMem_Free(t.data);
    Py_DECREF(segments);
    return body;
unexpected:
    PyMem_Free(t.data);
    Py_DECREF(segments);
    return fallback();
}

/* totals(segments) -> {(service, component): ns}, in first-seen order (TracePath.totals), or None */
static PyObject *totals(PyObject *self, PyObject *args) {
    PyObject *segments;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &segments)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(segments), used = 0;
    PyObject *index = PyDict_New(), *keys = PyList_New(0), *out = NULL, *result = NULL;
    int64_t *sums = PyMem_Calloc(n ? (size_t)n : 1, sizeof(int64_t));
    if (!index || !keys || !sums) {
        if (!sums) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *parts[5];
        int64_t a, b;
        PyObject *segment = item(segments, i);
        if (!segment || read_segment(segment, parts, &a, &b) < 0) goto unexpected;
        PyObject *key = PyTuple_Pack(2, parts[1], parts[2]);
        if (!key) goto done;
        PyObject *at = PyDict_GetItemWithError(index, key);
        Py_ssize_t slot;
        if (at) slot = PyLong_AsSsize_t(at);
        else {
            if (PyErr_Occurred()) { Py_DECREF(key); goto unexpected; }
            slot = used++;
            PyObject *number = PyLong_FromSsize_t(slot);
            if (!number || PyDict_SetItem(index, key, number) < 0 || PyList_Append(keys, key) < 0) {
                Py_XDECREF(number); Py_DECREF(key);
                goto unexpected;
            }
            Py_DECREF(number);
        }
        Py_DECREF(key);
        if (__builtin_add_overflow(sums[slot], b - a, &sums[slot])) goto unexpected;
    }
    out = PyDict_New();
    if (!out) goto done;
    for (Py_ssize_t k = 0; k < used; k++) {
        PyObject *value = PyLong_FromLongLong(sums[k]);
        if (!value || PyDict_SetItem(out, PyList_GET_ITEM(keys, k), value) < 0) {
            Py_XDECREF(value);
            goto unexpected;
        }
        Py_DECREF(value);
    }
    result = out;
    out = NULL;
    goto done;
unexpected:
    result = fallback();
done:
    Py_XDECREF(index); Py_XDECREF(keys); Py_XDECREF(out);
    PyMem_Free(sums);
    return result;
}

/* inherit_domains(own, parent, services) -> trace_domains' inheritance by position, or None: a span whose own
 * domain is "service:<name>" takes the domain of its nearest ancestor up the chain of parents from the same
 * service (stopping at a domain that is not "service:", at a parent of another service, or at a cycle). */
static PyObject *inherit_domains(PyObject *self, PyObject *args) {
    PyObject *own, *parent, *services;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyList_Type, &own, &PyList_Type, &parent, &PyList_Type, &services))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(own);
    if (!is_list_of(parent, n) || !is_list_of(services, n)) return fallback();
    PyObject *prefix = PyUnicode_FromString("service:"), *out = NULL, *result = NULL;
    unsigned char *by_service = PyMem_Calloc(n ? (size_t)n : 1, 1);
    Py_ssize_t *up = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_ssize_t)), *stamp = PyMem_Calloc(n ? (size_t)n : 1,
                                                                                                  sizeof(Py_ssize_t));
    if (!prefix || !by_service || !up || !stamp) {
        if (prefix) PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(own); Py_INCREF(services);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *domain = PyList_GET_ITEM(own, i), *p = PyList_GET_ITEM(parent, i);
        if (!PyUnicode_CheckExact(domain) || !PyLong_CheckExact(p)) goto unexpected;
        Py_ssize_t at = PyUnicode_Tailmatch(domain, prefix, 0, PY_SSIZE_T_MAX, -1);
        if (at < 0) goto unexpected;
        by_service[i] = (unsigned char)at;
        up[i] = PyLong_AsSsize_t(p);
        if (up[i] == -1 && PyErr_Occurred()) goto unexpected;  /* overflow: -1 with an error set */
        if (up[i] < -1 || up[i] >= n) goto unexpected;
    }
    out = PyList_GetSlice(own, 0, n);
    if (!out) goto unexpected;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!by_service[i]) continue;
        Py_ssize_t j = i;
        while (by_service[j] && stamp[j] != i + 1) {
            stamp[j] = i + 1;
            Py_ssize_t p = up[j];
            if (p < 0) break;
            PyObject *a = item(services, p), *b = item(services, j);
            if (!a || !b) goto unexpected;
            PyObject *differ = PyObject_RichCompare(a, b, Py_NE);
            int truthy = differ ? PyObject_IsTrue(differ) : -1;
            Py_XDECREF(differ);
            if (truthy < 0) goto unexpected;
            if (truthy) break;
            j = p;
        }
        if (j != i) {
            PyObject *domain = item(own, j);
            if (!domain) goto unexpected;
            Py_INCREF(domain);
            PyList_SetItem(out, i, domain);
        }
    }
    result = out;
    out = NULL;
    goto release;
unexpected:
    result = fallback();
release:
    Py_DECREF(own); Py_DECREF(services);
done:
    Py_XDECREF(prefix); Py_XDECREF(out);
    PyMem_Free(by_service); PyMem_Free(up); PyMem_Free(stamp);
    return result;
}

/* cross_pairs(parent, at) -> the positions i whose parent p is in the trace and at[p] != at[i] (the pairs across
 * clock domains), or None. */
static PyObject *cross_pairs(PyObject *self, PyObject *args) {
    PyObject *parent, *at;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &parent, &PyList_Type, &at)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(parent);
    if (!is_list_of(at, n)) return fallback();
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    Py_INCREF(parent); Py_INCREF(at);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pos = item(parent, i);
        if (!pos || !PyLong_CheckExact(pos)) goto unexpected;
        Py_ssize_t p = PyLong_AsSsize_t(pos);
        if (p == -1 && PyErr_Occurred()) goto unexpected;  /* overflow: -1 with an error set */
        if (p < -1 || p >= n) goto unexpected;
        if (p < 0) continue;
        PyObject *a = item(at, p), *b = item(at, i);
        if (!a || !b || !PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b)) goto unexpected;
        if (a == b || PyUnicode_Compare(a, b) == 0) continue;
        PyObject *child = PyLong_FromSsize_t(i);
        if (!child || PyList_Append(out, child) < 0) { Py_XDECREF(child); goto unexpected; }
        Py_DECREF(child);
    }
    Py_DECREF(parent); Py_DECREF(at);
    return out;
unexpected:
    Py_DECREF(parent); Py_DECREF(at); Py_DECREF(out);
    return fallback();
}

/* read_fields(maps, keys) -> one list per key: [m.get(key) for m in maps], all keys read in one pass over the
 * maps (each map's table is read while it is in cache), or None if a map is not a dict. */
static PyObject *read_fields(PyObject *self, PyObject *args) {
    PyObject *maps, *keys;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &maps, &PyTuple_Type, &keys)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(maps), count = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t k = 0; k < count; k++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(keys, k))) return fallback();
    PyObject *out = PyTuple_New(count);
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *list = PyList_New(n);
        if (!list) { Py_DECREF(out); return NULL; }
        PyTuple_SET_ITEM(out, k, list);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *map = PyList_GET_ITEM(maps, i);
        if (!PyDict_Check(map)) { Py_DECREF(out); return fallback(); }
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject *v = dict_get(map, PyTuple_GET_ITEM(keys, k));
            if (!v) { Py_DECREF(out); return fallback(); }
            Py_INCREF(v);
            PyList_SET_ITEM(PyTuple_GET_ITEM(out, k), i, v);
        }
    }
    return out;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* fold_pairs(cross, parent, at, start, end, kinds, links, attributes, follows_from)
 * -> {(domain_a, domain_b): (lo, hi, pairs)} in first-seen order: skew.trace_pair_bounds' loop over the
 * cross-domain pairs (skipping those _outlives_parent leaves out; follows_from(i) is asked only for a span with
 * links), or None. */
static PyObject *fold_pairs(PyObject *self, PyObject *args) {
    PyObject *cross, *parent, *at, *start, *end, *kinds, *links, *attributes, *follows_from;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!O", &PyList_Type, &cross, &PyList_Type, &parent, &PyList_Type, &at,
                          &PyList_Type, &start, &PyList_Type, &end, &PyList_Type, &kinds, &PyList_Type, &links,
                          &PyList_Type, &attributes, &follows_from))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(parent);
    PyObject *lists[] = {at, start, end, kinds, links, attributes};
    for (int k = 0; k < 6; k++)
        if (!is_list_of(lists[k], n)) return fallback();
    PyObject *index = PyDict_New(), *keys = PyList_New(0), *out = NULL, *result = NULL;
    PyObject *ut = PyUnicode_FromString("UT"), *flags_key = PyUnicode_FromString("response_flags");
    PyObject *canceled_key = PyUnicode_FromString("canceled");
    Py_ssize_t count = PyList_GET_SIZE(cross), used = 0;
    int64_t *bounds = PyMem_Calloc(3 * (size_t)(count ? count : 1), sizeof(int64_t));
    if (!index || !keys || !ut || !flags_key || !canceled_key || !bounds) {
        if (!bounds) PyErr_NoMemory();
        goto unexpected;
    }
    for (int k = 0; k < 6; k++) Py_INCREF(lists[k]);
    Py_INCREF(cross); Py_INCREF(parent);
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(cross); j++) {
        PyObject *child = item(cross, j), *up = child && PyLong_CheckExact(child) ? item(parent, PyLong_AsSsize_t(child))
                                                                                 : NULL;
        if (!up || !PyLong_CheckExact(up)) goto release;
        Py_ssize_t i = PyLong_AsSsize_t(child), p = PyLong_AsSsize_t(up);
        if (p < 0 || p >= n || i < 0 || i >= n) goto release;
        PyObject *kind = item(kinds, i), *parent_kind = item(kinds, p), *link = item(links, i);
        PyObject *map = item(attributes, p);
        if (!kind || !parent_kind || !link || !map || !PyDict_CheckExact(map)) goto release;
        if ((kind != Py_None && !PyUnicode_CheckExact(kind)) ||
            (parent_kind != Py_None && !PyUnicode_CheckExact(parent_kind)))
            goto release;  /* other kinds: the reference compares them */
        if ((kind != Py_None && is_ascii(kind, "CONSUMER")) || (parent_kind != Py_None &&
                                                               is_ascii(parent_kind, "PRODUCER")))
            continue;
        if (link != Py_None) {
            PyObject *answer = PyObject_CallFunction(follows_from, "n", i);
            int truthy = answer ? PyObject_IsTrue(answer) : -1;
            Py_XDECREF(answer);
            if (truthy < 0) goto release;
            if (truthy) continue;
        }
        /* a proxy that gave up: "UT" in str(response_flags or "") or str(canceled) == "true" */
        PyObject *flag = dict_get(map, flags_key), *canceled = flag ? dict_get(map, canceled_key) : NULL;
        if (!flag || !canceled || (flag != Py_None && !PyUnicode_CheckExact(flag)) ||
            (canceled != Py_None && !PyUnicode_CheckExact(canceled)))
            goto release;
        if (flag != Py_None) {
            Py_ssize_t found = PyUnicode_Find(flag, ut, 0, PY_SSIZE_T_MAX, 1);
            if (found == -2) goto release;
            if (found >= 0) continue;
        }
        if (canceled != Py_None && is_ascii(canceled, "true")) continue;
        PyObject *a = item(at, p), *b = item(at, i);
        int64_t si, sp, ei, ep;
        if (!a || !b || !PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b) ||
            as_time(item(start, i), &si) < 0 || as_time(item(start, p), &sp) < 0 ||
            as_time(item(end, i), &ei) < 0 || as_time(item(end, p), &ep) < 0)
            goto release;
        int64_t lo = ei - ep, hi = si - sp;
        PyObject *key;
        if (PyUnicode_Compare(a, b) < 0) key = PyTuple_Pack(2, a, b);
        else {
            key = PyTuple_Pack(2, b, a);
            int64_t flipped = -hi;
            hi = -lo;
            lo = flipped;
        }
        if (!key) goto release;
        PyObject *slot = PyDict_GetItemWithError(index, key);
        if (slot) {
            Py_ssize_t k = PyLong_AsSsize_t(slot);
            bounds[3 * k] = max64(bounds[3 * k], lo);
            bounds[3 * k + 1] = min64(bounds[3 * k + 1], hi);
            bounds[3 * k + 2] += 1;
        } else {
            PyObject *number = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(used);
            if (!number || PyDict_SetItem(index, key, number) < 0 || PyList_Append(keys, key) < 0) {
                Py_XDECREF(number); Py_DECREF(key);
                goto release;
            }
            Py_DECREF(number);
            bounds[3 * used] = lo;
            bounds[3 * used + 1] = hi;
            bounds[3 * used + 2] = 1;
            used++;
        }
        Py_DECREF(key);
    }
    out = PyDict_New();
    if (!out) goto release;
    for (Py_ssize_t k = 0; k < used; k++) {
        PyObject *value = Py_BuildValue("(LLL)", (long long)bounds[3 * k], (long long)bounds[3 * k + 1],
                                        (long long)bounds[3 * k + 2]);
        if (!value || PyDict_SetItem(out, PyList_GET_ITEM(keys, k), value) < 0) {
            Py_XDECREF(value);
            goto release;
        }
        Py_DECREF(value);
    }
    result = out;
    out = NULL;
release:
    for (int k = 0; k < 6; k++) Py_DECREF(lists[k]);
    Py_DECREF(cross); Py_DECREF(parent);
unexpected:
    if (!result) result = fallback();
    Py_XDECREF(index); Py_XDECREF(keys); Py_XDECREF(out); Py_XDECREF(ut); Py_XDECREF(flags_key);
    Py_XDECREF(canceled_key);
    PyMem_Free(bounds);
    return result;
}

/* configure(bits): bits maps each question the labeller asks of a role to its bit (path_labels.LABEL_QUESTIONS). */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *bits;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &bits)) return NULL;
    struct { long *slot; const char *name; } questions[] = {
        {&R_APP_CLIENT, "app_client"}, {&R_OUTBOUND, "outbound"}, {&R_UPSTREAM, "upstream"},
        {&R_CALLEE, "callee_side"}, {&R_LAYER_IPTABLES, "layer_iptables"}, {&R_LAYER_NETWORK, "layer_network"},
        {&R_LAYER, "layer"}, {&R_APP, "app"},
    };
    for (size_t k = 0; k < sizeof(questions) / sizeof(questions[0]); k++) {
        PyObject *bit = PyDict_GetItemString(bits, questions[k].name);
        long value = bit && PyLong_Check(bit) ? PyLong_AsLong(bit) : -1;
        if (value <= 0 || value > 128) {
            PyErr_Format(PyExc_ValueError, "configure(): no bit (1..128) for %s", questions[k].name);
            return NULL;
        }
        *questions[k].slot = value;
    }
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef METHODS[] = {
    {"configure", configure, METH_VARARGS, "configure(bits): the bit of each question the labeller asks of a role"},
    {"fold_pairs", fold_pairs, METH_VARARGS, "trace_pair_bounds' fold over the cross-domain pairs, or None"},
    {"read_fields", read_fields, METH_VARARGS, "[m.get(key) for m in maps] for several keys in one pass, or None"},
    {"inherit_domains", inherit_domains, METH_VARARGS, "trace_domains' service-domain inheritance, or None"},
    {"cross_pairs", cross_pairs, METH_VARARGS, "positions of spans in another clock domain than their parent"},
    {"columns", columns, METH_VARARGS, "TraceColumns.of's columns in one pass, or None"},
    {"memoised", memoised, METH_VARARGS, "values by memo key, computing misses, or None"},
    {"node_domains", node_domains, METH_VARARGS, "trace_domains' node rule on the node and pod columns"},
    {"path", path, METH_VARARGS, "tree, walk and labels: (segments, flags, root, roots, first, top_start, top_end), or None"},
    {"sections_body", sections_body, METH_VARARGS, "critical_path_api.sections_json as JSON text, or None"},
    {"totals", totals, METH_VARARGS, "TracePath.totals, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_critical_path", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__critical_path(void) {
    struct { PyObject **slot; const char *text; } strings[] = {
        {&S_span_id, "span_id"}, {&S_parent_span_id, "parent_span_id"}, {&S_start_ns, "start_ns"},
        {&S_end_ns, "end_ns"}, {&S_kind, "kind"}, {&S_service_name, "service_name"}, {&S_attributes, "attributes"},
        {&S_resource_attributes, "resource_attributes"}, {&S_links, "links"}, {&S_name, "name"},
        {&S_empty, ""},
        {&C_untraced, "untraced"}, {&C_retry, "retry"}, {&C_proxy, "proxy"}, {&C_network, "network"},
        {&C_iptables, "iptables"},
    };
    for (size_t k = 0; k < sizeof(strings) / sizeof(strings[0]); k++) {
        *strings[k].slot = PyUnicode_InternFromString(strings[k].text);
        if (!*strings[k].slot) return NULL;
    }
    return PyModule_Create(&MODULE);
}
