/* proto._speedups: the envelope half of proto.codec.decode, a msgpack frame packer and the store
 * line formatter (proto.jsonl.dumps), in C.
 *
 * Optional: setup.py builds it when a C compiler is there; proto.codec falls back to the pure
 * Python decode otherwise (and with TICKMESH_PURE_PYTHON=1). It only runs the *fast path* of a
 * well-formed frame, exactly as the Python code does it:
 *
 *   find NUL -> msgpack.unpackb(payload, ext_hook=..., raw=False) -> 9 fields -> checks ->
 *   cls._decode_fast(body) -> Envelope
 *
 * Whenever anything is unusual (not bytes, oversized, no separator, msgpack error, a non-ASCII
 * topic, wrong field count or types, unknown tag, major mismatch, a body that is not a list of
 * the right length) it calls the Python decode, which either handles the case or raises the
 * very DecodeError it always raises. So both implementations accept and refuse the same frames
 * with the same messages (tests/unit/test_codec_speedups.py checks that with hypothesis).
 * Money is untouched here: the body (Decimal fields) is decoded by the record's own Python
 * decoder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject *unpackb;      /* msgpack.unpackb */
    PyObject *kwargs;       /* {"ext_hook": ..., "raw": False} */
    PyObject *registry;     /* dict tag -> (record class, unwrapped body decoder, field count) */
    PyTypeObject *envelope; /* proto.codec.Envelope (a tuple subclass) */
    PyObject *fallback;     /* the pure Python decode */
    long major;
    Py_ssize_t max_frame;
    unsigned char sep;
    PyObject *last_topic;              /* the last topic decoded, and its bytes */
    Py_ssize_t last_topic_len;
    char last_topic_bytes[128];
    PyObject *last_source;
} Decoder;

static Decoder D;
static int configured = 0;

static PyObject *
fallback(PyObject *frame)
{
    return PyObject_CallOneArg(D.fallback, frame);
}

/* The envelope checks both fast paths share, in the order and with the types of decode_py. Returns 0
 * with *obj (the unpacked 9-list, a new reference), *topic_len and *entry (the registry entry
 * (cls, fast decoder, field count), borrowed) set; 1 when the frame is not on the fast path
 * (nothing held, no error set); -1 on an error (set). */
static int
parse_envelope(PyObject *frame, PyObject **obj_out, Py_ssize_t *topic_len, PyObject **entry_out)
{
    if (!PyBytes_CheckExact(frame))
        return 1;
    const char *buf = PyBytes_AS_STRING(frame);
    Py_ssize_t n = PyBytes_GET_SIZE(frame);
    if (n > D.max_frame)
        return 1;
    const char *sep = memchr(buf, D.sep, (size_t)n);
    if (sep == NULL || sep == buf)
        return 1;
    Py_ssize_t i = sep - buf;
    PyObject *view = PyMemoryView_FromMemory((char *)(buf + i + 1), n - i - 1, PyBUF_READ);
    if (view == NULL)
        return -1;
    PyObject *args = PyTuple_Pack(1, view);
    Py_DECREF(view);
    if (args == NULL)
        return -1;
    PyObject *obj = PyObject_Call(D.unpackb, args, D.kwargs);
    Py_DECREF(args);
    if (obj == NULL) {
        /* garbage, an ext hook refusal, ...: the Python path produces the error */
        PyErr_Clear();
        return 1;
    }
    if (!PyList_CheckExact(obj) || PyList_GET_SIZE(obj) != 9)
        goto no;
    PyObject **f = ((PyListObject *)obj)->ob_item;
    if (!PyLong_CheckExact(f[0]) || !PyUnicode_CheckExact(f[2]) || !PyLong_CheckExact(f[3])
        || !PyUnicode_CheckExact(f[4]) || !PyLong_CheckExact(f[5]) || !PyLong_CheckExact(f[6])
        || !PyLong_CheckExact(f[7]) || !PyList_CheckExact(f[8]))
        goto no;
    int overflow = 0;
    long mj = PyLong_AsLongAndOverflow(f[0], &overflow);
    if (overflow || mj != D.major)
        goto no;
    PyObject *entry = PyDict_GetItemWithError(D.registry, f[2]);
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3
        || PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2)) != PyList_GET_SIZE(f[8]))
        goto no;
    *obj_out = obj;
    *topic_len = i;
    *entry_out = entry;
    return 0;
no:
    PyErr_Clear();
    Py_DECREF(obj);
    return 1;
}

/* Envelope(topic, msg_id, source, seq, ts_event, ts_recv, msg) from the unpacked list's header;
 * steals topic and msg (also on failure). */
static PyObject *
make_envelope(PyObject **f, PyObject *source, PyObject *topic, PyObject *msg)
{
    PyObject *env = D.envelope->tp_alloc(D.envelope, 7);
    if (env == NULL) {
        Py_DECREF(topic);
        Py_DECREF(msg);
        return NULL;
    }
    PyTuple_SET_ITEM(env, 0, topic);
    PyTuple_SET_ITEM(env, 1, Py_NewRef(f[3]));
    PyTuple_SET_ITEM(env, 2, Py_NewRef(source));
    PyTuple_SET_ITEM(env, 3, Py_NewRef(f[5]));
    PyTuple_SET_ITEM(env, 4, Py_NewRef(f[6]));
    PyTuple_SET_ITEM(env, 5, Py_NewRef(f[7]));
    PyTuple_SET_ITEM(env, 6, msg);
    return env;
}

static PyObject *
sp_decode(PyObject *self, PyObject *frame)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "proto._speedups.configure() was not called");
        return NULL;
    }
    PyObject *obj, *entry;
    Py_ssize_t i;
    int rc = parse_envelope(frame, &obj, &i, &entry);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        return fallback(frame);
    PyObject **f = ((PyListObject *)obj)->ob_item;
    const char *buf = PyBytes_AS_STRING(frame);
    PyObject *out = NULL;
    PyObject *topic;
    if (D.last_topic != NULL && i == D.last_topic_len && memcmp(D.last_topic_bytes, buf, (size_t)i) == 0) {
        topic = Py_NewRef(D.last_topic);      /* the same topic as the last frame: one str object */
    } else {
        topic = PyUnicode_DecodeASCII(buf, i, NULL);
        if (topic == NULL) {
            PyErr_Clear();
            out = fallback(frame);
            goto done;
        }
        if (i <= (Py_ssize_t)sizeof(D.last_topic_bytes)) {
            Py_XSETREF(D.last_topic, Py_NewRef(topic));
            D.last_topic_len = i;
            memcpy(D.last_topic_bytes, buf, (size_t)i);
        }
    }
    /* the same source as the last frame: reuse that str (its hash is already computed) */
    PyObject *source = f[4];
    if (D.last_source != NULL && PyUnicode_Compare(source, D.last_source) == 0)
        source = D.last_source;
    else
        Py_XSETREF(D.last_source, Py_NewRef(source));
    PyObject *msg = PyObject_CallOneArg(PyTuple_GET_ITEM(entry, 1), f[8]);
    if (msg == NULL) {               /* let the Python path name the bad field */
        PyErr_Clear();
        Py_DECREF(topic);
        out = fallback(frame);
        goto done;
    }
    out = make_envelope(f, source, topic, msg);
done:
    Py_DECREF(obj);
    return out;
}

static PyObject *
sp_configure(PyObject *self, PyObject *args)
{
    PyObject *unpackb, *kwargs, *registry, *envelope, *fb;
    long major;
    Py_ssize_t max_frame;
    PyObject *sepobj;
    if (!PyArg_ParseTuple(args, "OO!O!OOlnS", &unpackb, &PyDict_Type, &kwargs, &PyDict_Type, &registry,
                          &envelope, &fb, &major, &max_frame, &sepobj))
        return NULL;
    if (!PyType_Check(envelope) || !PyType_IsSubtype((PyTypeObject *)envelope, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "envelope must be a tuple subclass");
        return NULL;
    }
    if (PyBytes_GET_SIZE(sepobj) != 1) {
        PyErr_SetString(PyExc_ValueError, "separator must be one byte");
        return NULL;
    }
    Py_XSETREF(D.unpackb, Py_NewRef(unpackb));
    Py_XSETREF(D.kwargs, Py_NewRef(kwargs));
    Py_XSETREF(D.registry, Py_NewRef(registry));
    Py_XSETREF(D.envelope, (PyTypeObject *)Py_NewRef(envelope));
    Py_XSETREF(D.fallback, Py_NewRef(fb));
    D.major = major;
    D.max_frame = max_frame;
    D.sep = (unsigned char)PyBytes_AS_STRING(sepobj)[0];
    Py_CLEAR(D.last_topic);
    Py_CLEAR(D.last_source);
    configured = 1;
    Py_RETURN_NONE;
}


/* --- pack_frame: prefix + msgpack(obj) in one bytes object -------------------------------------
 *
 * The encoding msgpack.Packer(use_bin_type=True) produces, byte for byte, for exact None, bool,
 * int (64-bit range), float, str, bytes, list, tuple and dict (tests compare the two on random
 * values). Anything else (an ExtType, a subclass, a huge int, nesting deeper than 64, a str with
 * surrogates) raises proto._speedups.Unsupported and the caller packs with msgpack.Packer, which
 * either handles the value or raises its usual error. */

static PyObject *Unsupported;

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char small[512];
} Buf;

static inline void
buf_init(Buf *b)
{
    b->p = b->small;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->small);
}

static inline void
buf_free(Buf *b)
{
    if (b->p != b->small)
        PyMem_Free(b->p);
}

static int
buf_reserve(Buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + extra)
        cap *= 2;
    char *np;
    if (b->p == b->small) {
        np = PyMem_Malloc((size_t)cap);
        if (np != NULL)
            memcpy(np, b->p, (size_t)b->len);
    } else {
        np = PyMem_Realloc(b->p, (size_t)cap);
    }
    if (np == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = np;
    b->cap = cap;
    return 0;
}

static inline int
put(Buf *b, const void *src, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static inline int
put_hdr(Buf *b, unsigned char code, uint64_t v, int nbytes)
{
    unsigned char t[9];
    t[0] = code;
    for (int k = 0; k < nbytes; k++)
        t[1 + k] = (unsigned char)(v >> (8 * (nbytes - 1 - k)));
    return put(b, t, 1 + nbytes);
}

static int
pack_len(Buf *b, Py_ssize_t n, unsigned char fix, int fixmax, unsigned char c8, unsigned char c16,
         unsigned char c32)
{
    if (n <= fixmax)
        return put_hdr(b, (unsigned char)(fix | n), 0, 0);
    if (c8 && n <= 0xff)
        return put_hdr(b, c8, (uint64_t)n, 1);
    if (n <= 0xffff)
        return put_hdr(b, c16, (uint64_t)n, 2);
    if ((uint64_t)n <= 0xffffffffULL)
        return put_hdr(b, c32, (uint64_t)n, 4);
    PyErr_SetString(Unsupported, "too long");
    return -1;
}

static int
pack_obj(Buf *b, PyObject *o, int depth)
{
    if (depth > 64) {
        PyErr_SetString(Unsupported, "nested too deep");
        return -1;
    }
    if (o == Py_None)
        return put_hdr(b, 0xc0, 0, 0);
    if (o == Py_True)
        return put_hdr(b, 0xc3, 0, 0);
    if (o == Py_False)
        return put_hdr(b, 0xc2, 0, 0);
    if (PyUnicode_CheckExact(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) {
            PyErr_Clear();
            PyErr_SetString(Unsupported, "str");
            return -1;
        }
        if (pack_len(b, n, 0xa0, 31, 0xd9, 0xda, 0xdb) < 0)
            return -1;
        return put(b, s, n);
    }
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow == 0) {
            if (v == -1 && PyErr_Occurred())
                return -1;
            if (v >= 0) {
                uint64_t u = (uint64_t)v;
                if (u < 128) return put_hdr(b, (unsigned char)u, 0, 0);
                if (u <= 0xff) return put_hdr(b, 0xcc, u, 1);
                if (u <= 0xffff) return put_hdr(b, 0xcd, u, 2);
                if (u <= 0xffffffffULL) return put_hdr(b, 0xce, u, 4);
                return put_hdr(b, 0xcf, u, 8);
            }
            if (v >= -32) return put_hdr(b, (unsigned char)(0xe0 | (v + 32)), 0, 0);
            if (v >= -128) return put_hdr(b, 0xd0, (uint64_t)v, 1);
            if (v >= -32768) return put_hdr(b, 0xd1, (uint64_t)v, 2);
            if (v >= -2147483648LL) return put_hdr(b, 0xd2, (uint64_t)v, 4);
            return put_hdr(b, 0xd3, (uint64_t)v, 8);
        }
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                PyErr_SetString(Unsupported, "int");
                return -1;
            }
            return put_hdr(b, 0xcf, (uint64_t)u, 8);
        }
        PyErr_SetString(Unsupported, "int");
        return -1;
    }
    if (PyFloat_CheckExact(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t u;
        memcpy(&u, &d, 8);
        return put_hdr(b, 0xcb, u, 8);
    }
    if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        PyObject **items = PySequence_Fast_ITEMS(o);
        if (pack_len(b, n, 0x90, 15, 0, 0xdc, 0xdd) < 0)
            return -1;
        for (Py_ssize_t k = 0; k < n; k++) {
            if (pack_obj(b, items[k], depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    if (PyDict_CheckExact(o)) {
        Py_ssize_t n = PyDict_GET_SIZE(o), pos = 0;
        PyObject *k, *v;
        if (pack_len(b, n, 0x80, 15, 0, 0xde, 0xdf) < 0)
            return -1;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (pack_obj(b, k, depth + 1) < 0 || pack_obj(b, v, depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    if (PyBytes_CheckExact(o)) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        if (pack_len(b, n, 0, -1, 0xc4, 0xc5, 0xc6) < 0)
            return -1;
        return put(b, PyBytes_AS_STRING(o), n);
    }
    PyErr_SetString(Unsupported, Py_TYPE(o)->tp_name);
    return -1;
}

static PyObject *
sp_pack_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "pack_frame(prefix: bytes, obj)");
        return NULL;
    }
    Buf b;
    buf_init(&b);
    PyObject *out = NULL;
    if (put(&b, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0])) == 0
        && pack_obj(&b, args[1], 0) == 0)
        out = PyBytes_FromStringAndSize(b.p, b.len);
    buf_free(&b);
    return out;
}

/* --- dump_line: proto.jsonl.dumps(env) in C ------------------------------------------------------
 *
 * The store line ``json.dumps(envelope_to_plain(env), separators=(",", ":"))``, character for
 * character, for an exact Envelope of a registered record whose values are exact str (through
 * json's own C escaper, so escaping is identical), Decimal (its exact string), int, bool, None,
 * float (repr; NaN/Infinity as json writes them), list, tuple, dict with str keys, and nested
 * registered records. Anything else raises Unsupported and the caller uses the Python formatter. */

typedef struct {
    PyObject *records;     /* record class -> tuple of the escaped field keys ('"name":') */
    PyObject *type_part;   /* record class -> ',"type":"Tag","source":' */
    PyObject *esc;         /* _json.encode_basestring_ascii */
    PyObject *decimal;     /* decimal.Decimal */
    PyTypeObject *envelope;
    int ready;
} Lines;

static Lines L;

static int
put_str(Buf *b, PyObject *s)       /* an ASCII str object's characters */
{
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (p == NULL)
        return -1;
    return put(b, p, n);
}

static int
put_new(Buf *b, PyObject *s)       /* put_str, then drop the reference */
{
    if (s == NULL)
        return -1;
    int rc = put_str(b, s);
    Py_DECREF(s);
    return rc;
}

static int json_value(Buf *b, PyObject *o, int depth);

static int
json_record(Buf *b, PyObject *o, PyObject *keys, int depth)
{
    Py_ssize_t n = PyTuple_GET_SIZE(o);
    if (!PyTuple_CheckExact(keys) || PyTuple_GET_SIZE(keys) != n) {
        PyErr_SetString(Unsupported, "record shape");
        return -1;
    }
    if (put(b, "{", 1) < 0)
        return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k && put(b, ",", 1) < 0)
            return -1;
        if (put_str(b, PyTuple_GET_ITEM(keys, k)) < 0 || json_value(b, PyTuple_GET_ITEM(o, k), depth + 1) < 0)
            return -1;
    }
    return put(b, "}", 1);
}

static int
json_value(Buf *b, PyObject *o, int depth)
{
    if (depth > 64) {
        PyErr_SetString(Unsupported, "nested too deep");
        return -1;
    }
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type)
        return put_new(b, PyObject_CallOneArg(L.esc, o));
    if ((PyObject *)t == L.decimal) {
        if (put(b, "\"", 1) < 0 || put_new(b, PyObject_Str(o)) < 0)
            return -1;
        return put(b, "\"", 1);
    }
    if (o == Py_None)
        return put(b, "null", 4);
    if (o == Py_True)
        return put(b, "true", 4);
    if (o == Py_False)
        return put(b, "false", 5);
    if (t == &PyLong_Type)
        return put_new(b, PyObject_Str(o));
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        if (d != d)
            return put(b, "NaN", 3);
        if (d == Py_HUGE_VAL)
            return put(b, "Infinity", 8);
        if (d == -Py_HUGE_VAL)
            return put(b, "-Infinity", 9);
        return put_new(b, PyObject_Repr(o));
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        if (put(b, "[", 1) < 0)
            return -1;
        for (Py_ssize_t k = 0; k < n; k++) {
            if (k && put(b, ",", 1) < 0)
                return -1;
            /* the list may be changed by a call below (str of a Decimal cannot, but be safe) */
            if (k >= PySequence_Fast_GET_SIZE(o)) {
                PyErr_SetString(Unsupported, "changed");
                return -1;
            }
            if (json_value(b, PySequence_Fast_ITEMS(o)[k], depth + 1) < 0)
                return -1;
        }
        return put(b, "]", 1);
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int first = 1;
        if (put(b, "{", 1) < 0)
            return -1;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k)) {
                PyErr_SetString(Unsupported, "dict key");
                return -1;
            }
            if (!first && put(b, ",", 1) < 0)
                return -1;
            first = 0;
            Py_INCREF(k);
            Py_INCREF(v);
            int rc = put_new(b, PyObject_CallOneArg(L.esc, k));
            if (rc == 0)
                rc = put(b, ":", 1);
            if (rc == 0)
                rc = json_value(b, v, depth + 1);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0)
                return -1;
        }
        return put(b, "}", 1);
    }
    PyObject *keys = PyDict_GetItemWithError(L.records, (PyObject *)t);
    if (keys != NULL)
        return json_record(b, o, keys, depth);
    if (!PyErr_Occurred())
        PyErr_SetString(Unsupported, t->tp_name);
    return -1;
}

static int
put_int_field(Buf *b, const char *key, PyObject *v)
{
    if (put(b, key, (Py_ssize_t)strlen(key)) < 0)
        return -1;
    return put_new(b, PyObject_Str(v));
}

/* '{"topic":..,"type":..,"source":..,"seq":..,"msg_id":..,"ts_event":..,"ts_recv":..,"body":' */
static int
put_line_head(Buf *b, PyObject *topic, PyObject *type_part, PyObject *source, PyObject *seq, PyObject *msg_id,
              PyObject *ts_event, PyObject *ts_recv)
{
    if (put(b, "{\"topic\":", 9) < 0 || put_new(b, PyObject_CallOneArg(L.esc, topic)) < 0
        || put_str(b, type_part) < 0 || put_new(b, PyObject_CallOneArg(L.esc, source)) < 0
        || put_int_field(b, ",\"seq\":", seq) < 0 || put_int_field(b, ",\"msg_id\":", msg_id) < 0
        || put_int_field(b, ",\"ts_event\":", ts_event) < 0 || put_int_field(b, ",\"ts_recv\":", ts_recv) < 0)
        return -1;
    return put(b, ",\"body\":", 8);
}

static PyObject *
sp_dump_line(PyObject *self, PyObject *env)
{
    if (!L.ready) {
        PyErr_SetString(PyExc_RuntimeError, "proto._speedups.configure_lines() was not called");
        return NULL;
    }
    if (Py_TYPE(env) != L.envelope || PyTuple_GET_SIZE(env) != 7) {
        PyErr_SetString(Unsupported, "not an Envelope");
        return NULL;
    }
    PyObject *topic = PyTuple_GET_ITEM(env, 0), *msg_id = PyTuple_GET_ITEM(env, 1);
    PyObject *source = PyTuple_GET_ITEM(env, 2), *seq = PyTuple_GET_ITEM(env, 3);
    PyObject *ts_event = PyTuple_GET_ITEM(env, 4), *ts_recv = PyTuple_GET_ITEM(env, 5);
    PyObject *msg = PyTuple_GET_ITEM(env, 6);
    if (!PyUnicode_CheckExact(topic) || !PyUnicode_CheckExact(source) || !PyLong_CheckExact(msg_id)
        || !PyLong_CheckExact(seq) || !PyLong_CheckExact(ts_event) || !PyLong_CheckExact(ts_recv)) {
        PyErr_SetString(Unsupported, "envelope field types");
        return NULL;
    }
    PyObject *keys = PyDict_GetItemWithError(L.records, (PyObject *)Py_TYPE(msg));
    PyObject *type_part = keys ? PyDict_GetItemWithError(L.type_part, (PyObject *)Py_TYPE(msg)) : NULL;
    if (keys == NULL || type_part == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(Unsupported, "not a registered record");
        return NULL;
    }
    Buf b;
    buf_init(&b);
    PyObject *out = NULL;
    if (put_line_head(&b, topic, type_part, source, seq, msg_id, ts_event, ts_recv) == 0
        && json_record(&b, msg, keys, 0) == 0
        && put(&b, "}", 1) == 0)
        out = PyUnicode_DecodeASCII(b.p, b.len, NULL);
    buf_free(&b);
    return out;
}

static PyObject *
sp_configure_lines(PyObject *self, PyObject *args)
{
    PyObject *records, *type_part, *esc, *decimal, *envelope;
    if (!PyArg_ParseTuple(args, "O!O!OOO", &PyDict_Type, &records, &PyDict_Type, &type_part, &esc, &decimal,
                          &envelope))
        return NULL;
    if (!PyType_Check(envelope) || !PyType_Check(decimal)) {
        PyErr_SetString(PyExc_TypeError, "Envelope and Decimal must be types");
        return NULL;
    }
    Py_XSETREF(L.records, Py_NewRef(records));
    Py_XSETREF(L.type_part, Py_NewRef(type_part));
    Py_XSETREF(L.esc, Py_NewRef(esc));
    Py_XSETREF(L.decimal, Py_NewRef(decimal));
    Py_XSETREF(L.envelope, (PyTypeObject *)Py_NewRef(envelope));
    L.ready = 1;
    Py_RETURN_NONE;
}

/* --- levels_in: a book side [[price, size], ...] of exact decimal strings -> [[Decimal, Decimal]] ----
 *
 * proto.messages._levels_in's loop, memoised through the same DECIMALS cache (a dict subclass whose
 * __missing__ parses, validates and inserts; cache_miss does the same in C for canonical strings). Anything unusual (not a list, a level that is not a
 * 2-list, a key the cache refuses) goes to the Python function, which raises the named error. */

static int canon_decimal(const char *s, Py_ssize_t n);

/* A cache miss on an exact decimal string in canonical form (what str(Decimal) writes: a valid,
 * finite decimal) builds the Decimal here and inserts it, as the cache's __missing__ would, without
 * a Python call per level (a book's sizes rarely repeat: most of them miss). Anything else, and a
 * full cache (its __missing__ clears it), goes through __missing__. NULL with an exception set. */
static Py_ssize_t cache_max = -1;

static PyObject *
cache_miss(PyObject *cache, PyObject *key)
{
    if (L.decimal != NULL && cache_max < 0) {
        PyObject *m = PyObject_GetAttrString(cache, "MAX");
        cache_max = m != NULL ? PyLong_AsSsize_t(m) : 0;
        Py_XDECREF(m);
        if (cache_max < 0 || PyErr_Occurred()) {
            PyErr_Clear();
            cache_max = 0;
        }
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(key, &n);
    if (p == NULL)
        return NULL;
    if (L.decimal == NULL || PyDict_GET_SIZE(cache) >= cache_max || !canon_decimal(p, n))
        return PyObject_GetItem(cache, key);
    PyObject *d = PyObject_CallOneArg(L.decimal, key);
    if (d == NULL)
        return NULL;
    if (PyDict_SetItem(cache, key, d) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* A decimal string through the DECIMALS cache (a new reference; NULL with an error set). */
static PyObject *
dec_lookup(PyObject *cache, PyObject *key)
{
    PyObject *d = PyDict_GetItemWithError(cache, key);      /* borrowed; a hit */
    if (d != NULL)
        return Py_NewRef(d);
    if (PyErr_Occurred())
        return NULL;
    return cache_miss(cache, key);
}

/* [[price, size], ...] of decimal strings -> [[Decimal, Decimal], ...]; NULL (an error set or not)
 * for anything unusual, which the caller hands to the Python decoder. */
static PyObject *
levels_plain(PyObject *cache, PyObject *v)
{
    if (!PyList_CheckExact(v))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(v);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *lv = PyList_GET_ITEM(v, k);
        if (!PyList_CheckExact(lv) || PyList_GET_SIZE(lv) != 2)
            goto bad;
        PyObject *pair = PyList_New(2);
        if (pair == NULL)
            goto bad;
        PyList_SET_ITEM(out, k, pair);
        for (int j = 0; j < 2; j++) {
            PyObject *key = PyList_GET_ITEM(lv, j);
            if (!PyUnicode_CheckExact(key))
                goto bad;
            PyObject *d = dec_lookup(cache, key);
            if (d == NULL)
                goto bad;
            PyList_SET_ITEM(pair, j, d);
        }
    }
    return out;
bad:
    Py_DECREF(out);
    return NULL;
}

static PyObject *
levels_in(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "levels_in(cache, fallback, v, name)");
        return NULL;
    }
    PyObject *cache = args[0], *fb = args[1], *v = args[2], *name = args[3];
    if (PyDict_Check(cache)) {
        PyObject *out = levels_plain(cache, v);
        if (out != NULL)
            return out;
        PyErr_Clear();
    }
    return PyObject_CallFunctionObjArgs(fb, v, name, NULL);
}

/* --- record_in: a record's body (a list of wire values) -> the record ------------------------------
 *
 * The generated Python decoder (proto.messages._compile's ``dec``) in C, for records whose fields
 * are all Decimal (D), str (S), int (I), bool (B), float (F) or book levels (L), upper case
 * required, lower case optional (None allowed): the same checks (exact types; an int becomes a
 * float for a float field), Decimals through the same DECIMALS cache. Anything it does not take
 * raises (ValueError, or the cache's error); its callers then run the Python decoder, which
 * accepts the same values or names the bad field. */

static PyObject *
record_in(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "record_in(cls, kinds, cache, body)");
        return NULL;
    }
    PyObject *cls = args[0], *kinds = args[1], *cache = args[2], *body = args[3];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) || !PyBytes_Check(kinds)
        || !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "record_in(cls, kinds, cache, body): bad arguments");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(kinds);
    if (!PyList_CheckExact(body) || PyList_GET_SIZE(body) != n) {
        PyErr_SetString(PyExc_ValueError, "record_in: not a body of this record");
        return NULL;
    }
    const char *k = PyBytes_AS_STRING(kinds);
    PyObject *rec = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, n);
    if (rec == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(body, i), *out = NULL;
        char c = k[i];
        if (v == Py_None) {
            if (c < 'a')                   /* required */
                goto unusual;
            out = Py_NewRef(Py_None);
        } else {
            switch (c | 0x20) {
            case 'd':
                if (!PyUnicode_CheckExact(v))
                    goto unusual;
                out = dec_lookup(cache, v);
                break;
            case 's':
                if (!PyUnicode_CheckExact(v))
                    goto unusual;
                out = Py_NewRef(v);
                break;
            case 'i':
                if (!PyLong_CheckExact(v))
                    goto unusual;
                out = Py_NewRef(v);
                break;
            case 'b':
                if (!PyBool_Check(v))
                    goto unusual;
                out = Py_NewRef(v);
                break;
            case 'f':
                if (PyFloat_CheckExact(v))
                    out = Py_NewRef(v);
                else if (PyLong_CheckExact(v))
                    out = PyNumber_Float(v);
                else
                    goto unusual;
                break;
            case 'l':
                out = levels_plain(cache, v);
                break;
            default:
                goto unusual;
            }
            if (out == NULL) {
                if (!PyErr_Occurred())
                    goto unusual;
                goto fail;
            }
        }
        PyTuple_SET_ITEM(rec, i, out);
    }
    return rec;
unusual:
    PyErr_SetString(PyExc_ValueError, "record_in: a value the Python decoder must judge");
fail:
    Py_DECREF(rec);                        /* tp_alloc zeroed the items not set */
    return NULL;
}

/* --- record_out: a record -> its body (a list of wire values) ------------------------------------
 *
 * The generated Python encoder (proto.messages._compile's ``_encode``) in C, for the same records
 * as record_in: a finite Decimal as its exact string, str/int/bool as they are, an int or float
 * as a float for a float field, book levels as [[price, size], ...] strings, None for an optional
 * field. Anything else (a wrong type, a non-finite Decimal, levels that are not lists or tuples of
 * pairs) is encoded by ``fallback`` (the Python encoder), which gives the same body or raises the
 * EncodeError that names the field. */

static PyObject *
dec_str(PyObject *v)               /* str of a finite Decimal, NULL (no error set) for anything else */
{
    if (L.decimal == NULL || Py_TYPE(v) != (PyTypeObject *)L.decimal)
        return NULL;
    PyObject *s = PyObject_Str(v);
    if (s == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    Py_UCS4 last = n ? PyUnicode_READ_CHAR(s, n - 1) : 0;
    if (last < '0' || last > '9') {        /* NaN, sNaN, Infinity: not on the wire */
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

static PyObject *
levels_out(PyObject *v)
{
    if (!PyList_CheckExact(v) && !PyTuple_CheckExact(v))
        return NULL;
    PyObject *seq = v;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        PyErr_Clear();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *lv = PySequence_Fast_GET_ITEM(seq, k);
        if ((!PyList_CheckExact(lv) && !PyTuple_CheckExact(lv)) || PySequence_Fast_GET_SIZE(lv) != 2)
            goto bad;
        PyObject *p = dec_str(PySequence_Fast_GET_ITEM(lv, 0));
        if (p == NULL)
            goto bad;
        PyObject *q = dec_str(PySequence_Fast_GET_ITEM(lv, 1));
        if (q == NULL) {
            Py_DECREF(p);
            goto bad;
        }
        PyObject *pair = PyList_New(2);
        if (pair == NULL) {
            PyErr_Clear();
            Py_DECREF(p);
            Py_DECREF(q);
            goto bad;
        }
        PyList_SET_ITEM(pair, 0, p);
        PyList_SET_ITEM(pair, 1, q);
        PyList_SET_ITEM(out, k, pair);
    }
    return out;
bad:
    Py_DECREF(out);
    return NULL;
}

static PyObject *
record_out(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "record_out(fallback, kinds, record)");
        return NULL;
    }
    PyObject *fb = args[0], *kinds = args[1], *m = args[2];
    if (!PyBytes_Check(kinds))
        return PyObject_CallOneArg(fb, m);
    Py_ssize_t n = PyBytes_GET_SIZE(kinds);
    if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) != n)
        return PyObject_CallOneArg(fb, m);
    const char *k = PyBytes_AS_STRING(kinds);
    PyObject *body = PyList_New(n);
    if (body == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(m, i), *out = NULL;
        char c = k[i];
        if (v == Py_None) {
            if (c < 'a')
                goto slow;
            out = Py_NewRef(Py_None);
        } else {
            switch (c | 0x20) {
            case 'd':
                out = dec_str(v);
                break;
            case 's':
                out = PyUnicode_CheckExact(v) ? Py_NewRef(v) : NULL;
                break;
            case 'i':
                out = PyLong_CheckExact(v) ? Py_NewRef(v) : NULL;
                break;
            case 'b':
                out = PyBool_Check(v) ? Py_NewRef(v) : NULL;
                break;
            case 'f':
                if (PyFloat_CheckExact(v))
                    out = Py_NewRef(v);
                else if (PyLong_CheckExact(v)) {
                    out = PyNumber_Float(v);
                    if (out == NULL)
                        PyErr_Clear();
                }
                break;
            case 'l':
                out = levels_out(v);
                break;
            }
            if (out == NULL)
                goto slow;
        }
        PyList_SET_ITEM(body, i, out);
    }
    return body;
slow:
    Py_DECREF(body);                       /* PyList_New zeroed the items not set */
    return PyObject_CallOneArg(fb, m);
}

/* --- store_envelope: a wire frame straight to its store line ----------------------------------------
 *
 * For the store node: a frame whose body holds only exact decimal strings in canonical form (what
 * str(Decimal) writes, which every tickmesh encoder sends), str, int, bool, float and book levels is
 * validated exactly as decode() validates it and formatted exactly as proto.jsonl.dumps(decode(frame))
 * would be, without building the Decimals. Returns Envelope(topic, msg_id, source, seq, ts_event,
 * ts_recv, line_type(line)); anything else goes through decode() (a malformed frame raises its
 * DecodeError there, a non-canonical decimal takes the Decimal path). */

static PyObject *S_kinds = NULL;      /* tag -> bytes of field kinds (classes with other kinds absent) */
static PyObject *S_line_type = NULL;  /* the msg type carrying the line (a str subclass) */

static int
canon_decimal(const char *s, Py_ssize_t n)
{
    if (n == 0 || n > 64)
        return 0;
    Py_ssize_t i = 0, intd = 0, frac = 0, fraclead = 0;
    int intzero = 0;
    if (s[0] == '-') {
        i = 1;
        if (n == 1)
            return 0;
    }
    if (s[i] == '0') {
        intzero = 1;
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            intd++;
        }
    } else {
        return 0;
    }
    if (i < n && s[i] == '.') {
        i++;
        int leading = 1;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (leading && s[i] == '0')
                fraclead++;
            else
                leading = 0;
            i++;
            frac++;
        }
        if (frac == 0)
            return 0;
    }
    if (i != n)
        return 0;
    Py_ssize_t sig;              /* digits of the coefficient (0 has one) */
    if (!intzero)
        sig = intd + frac;
    else if (fraclead < frac)
        sig = frac - fraclead;
    else
        sig = 1;
    return sig - 1 - frac >= -6;   /* str(Decimal) keeps plain notation: exp <= 0, adjusted >= -6 */
}

/* A msgpack reader over the frame's bytes, for the store path: it reads the subset tickmesh
 * encoders write (ints, float64, bool, nil, str, arrays) and builds no Python object for the body.
 * Every function returns 0 on success and 1 for anything else (the frame then takes decode()). */
typedef struct {
    const unsigned char *p, *end;
} Rd;

enum { MP_NIL, MP_FALSE, MP_TRUE, MP_UINT, MP_INT, MP_F64, MP_STR, MP_ARR, MP_OTHER };

typedef struct {
    int type;
    uint64_t u;              /* MP_UINT */
    int64_t i;               /* MP_INT (negative) */
    double d;                /* MP_F64 */
    const char *s;           /* MP_STR */
    Py_ssize_t n;            /* MP_STR length, MP_ARR count */
} Mp;

static inline int
rd_be(Rd *r, int nbytes, uint64_t *v)
{
    if (r->end - r->p < nbytes)
        return 1;
    uint64_t x = 0;
    for (int k = 0; k < nbytes; k++)
        x = (x << 8) | r->p[k];
    r->p += nbytes;
    *v = x;
    return 0;
}

static int
rd_obj(Rd *r, Mp *m)
{
    if (r->p >= r->end)
        return 1;
    unsigned c = *r->p++;
    uint64_t v;
    m->type = MP_OTHER;
    if (c <= 0x7f) {
        m->type = MP_UINT;
        m->u = c;
    } else if (c >= 0xe0) {
        m->type = MP_INT;
        m->i = (int8_t)c;
    } else if ((c & 0xe0) == 0xa0 || c == 0xd9 || c == 0xda || c == 0xdb) {
        if ((c & 0xe0) == 0xa0)
            v = c & 0x1f;
        else if (rd_be(r, c == 0xd9 ? 1 : c == 0xda ? 2 : 4, &v))
            return 1;
        if ((uint64_t)(r->end - r->p) < v)
            return 1;
        m->type = MP_STR;
        m->s = (const char *)r->p;
        m->n = (Py_ssize_t)v;
        r->p += v;
    } else if ((c & 0xf0) == 0x90 || c == 0xdc || c == 0xdd) {
        if ((c & 0xf0) == 0x90)
            v = c & 0x0f;
        else if (rd_be(r, c == 0xdc ? 2 : 4, &v))
            return 1;
        m->type = MP_ARR;
        m->n = (Py_ssize_t)v;
    } else if (c == 0xc0) {
        m->type = MP_NIL;
    } else if (c == 0xc2) {
        m->type = MP_FALSE;
    } else if (c == 0xc3) {
        m->type = MP_TRUE;
    } else if (c >= 0xcc && c <= 0xcf) {
        if (rd_be(r, 1 << (c - 0xcc), &v))
            return 1;
        m->type = MP_UINT;
        m->u = v;
    } else if (c >= 0xd0 && c <= 0xd3) {
        int nb = 1 << (c - 0xd0);
        if (rd_be(r, nb, &v))
            return 1;
        int64_t x = nb == 8 ? (int64_t)v : (int64_t)(v << (64 - 8 * nb)) >> (64 - 8 * nb);
        if (x >= 0) {
            m->type = MP_UINT;
            m->u = (uint64_t)x;
        } else {
            m->type = MP_INT;
            m->i = x;
        }
    } else if (c == 0xcb) {
        if (rd_be(r, 8, &v))
            return 1;
        m->type = MP_F64;
        memcpy(&m->d, &v, 8);
    }
    return m->type == MP_OTHER;
}

static PyObject *
mp_int(const Mp *m)          /* a Python int of an MP_UINT / MP_INT, NULL (no error) otherwise */
{
    if (m->type == MP_UINT)
        return PyLong_FromUnsignedLongLong(m->u);
    if (m->type == MP_INT)
        return PyLong_FromLongLong(m->i);
    return NULL;
}

static int
put_mp_int(Buf *b, const Mp *m)
{
    char t[32];
    int n = m->type == MP_UINT ? snprintf(t, sizeof t, "%llu", (unsigned long long)m->u)
                               : snprintf(t, sizeof t, "%lld", (long long)m->i);
    return put(b, t, n);
}

static int
plain_ascii(const char *s, Py_ssize_t n)   /* printable ASCII that JSON writes as it is */
{
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return 0;
    }
    return 1;
}

/* 0: written; 1: not the fast form; -1: error set */
static int
put_mp_field(Buf *b, Rd *r, char kind)
{
    Mp m;
    if (rd_obj(r, &m))
        return 1;
    int optional = (kind >= 'a' && kind <= 'z');
    if (m.type == MP_NIL)
        return optional ? (put(b, "null", 4) < 0 ? -1 : 0) : 1;
    switch (kind | 0x20) {
    case 'd':
        if (m.type != MP_STR || !canon_decimal(m.s, m.n))
            return 1;
        return (put(b, "\"", 1) < 0 || put(b, m.s, m.n) < 0 || put(b, "\"", 1) < 0) ? -1 : 0;
    case 's':
        if (m.type != MP_STR || !plain_ascii(m.s, m.n))
            return 1;
        return (put(b, "\"", 1) < 0 || put(b, m.s, m.n) < 0 || put(b, "\"", 1) < 0) ? -1 : 0;
    case 'i':
        if (m.type != MP_UINT && m.type != MP_INT)
            return 1;
        return put_mp_int(b, &m) < 0 ? -1 : 0;
    case 'b':
        if (m.type == MP_TRUE)
            return put(b, "true", 4) < 0 ? -1 : 0;
        if (m.type == MP_FALSE)
            return put(b, "false", 5) < 0 ? -1 : 0;
        return 1;
    case 'f': {
        if (m.type != MP_F64 || !isfinite(m.d))
            return 1;
        char *rep = PyOS_double_to_string(m.d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);   /* float.__repr__ */
        if (rep == NULL)
            return -1;
        int rc = put(b, rep, (Py_ssize_t)strlen(rep));
        PyMem_Free(rep);
        return rc < 0 ? -1 : 0;
    }
    case 'l': {
        if (m.type != MP_ARR)
            return 1;
        Py_ssize_t n = m.n;
        if (put(b, "[", 1) < 0)
            return -1;
        for (Py_ssize_t k = 0; k < n; k++) {
            Mp lv, p, q;
            if (rd_obj(r, &lv) || lv.type != MP_ARR || lv.n != 2 || rd_obj(r, &p) || rd_obj(r, &q)
                || p.type != MP_STR || q.type != MP_STR || !canon_decimal(p.s, p.n) || !canon_decimal(q.s, q.n))
                return 1;
            if ((k && put(b, ",", 1) < 0) || put(b, "[\"", 2) < 0 || put(b, p.s, p.n) < 0
                || put(b, "\",\"", 3) < 0 || put(b, q.s, q.n) < 0 || put(b, "\"]", 2) < 0)
                return -1;
        }
        return put(b, "]", 1) < 0 ? -1 : 0;
    }
    }
    return 1;
}

static PyObject *
sp_store_envelope(PyObject *self, PyObject *frame)
{
    if (!configured || !L.ready || S_kinds == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "proto._speedups: configure_store() was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(frame))
        return sp_decode(self, frame);
    const char *buf = PyBytes_AS_STRING(frame);
    Py_ssize_t n = PyBytes_GET_SIZE(frame);
    const char *sep = n <= D.max_frame ? memchr(buf, D.sep, (size_t)n) : NULL;
    if (sep == NULL || sep == buf)
        return sp_decode(self, frame);
    Py_ssize_t i = sep - buf;
    if (!plain_ascii(buf, i))
        return sp_decode(self, frame);
    Rd r = {(const unsigned char *)sep + 1, (const unsigned char *)buf + n};
    Mp arr, major, minor, tag, msg_id, source, seq, ts_event, ts_recv, body;
    if (rd_obj(&r, &arr) || arr.type != MP_ARR || arr.n != 9 || rd_obj(&r, &major) || major.type != MP_UINT
        || major.u != (uint64_t)D.major || rd_obj(&r, &minor) || (minor.type != MP_UINT && minor.type != MP_INT)
        || rd_obj(&r, &tag) || tag.type != MP_STR || rd_obj(&r, &msg_id) || (msg_id.type != MP_UINT && msg_id.type != MP_INT)
        || rd_obj(&r, &source) || source.type != MP_STR || !plain_ascii(source.s, source.n)
        || rd_obj(&r, &seq) || (seq.type != MP_UINT && seq.type != MP_INT)
        || rd_obj(&r, &ts_event) || (ts_event.type != MP_UINT && ts_event.type != MP_INT)
        || rd_obj(&r, &ts_recv) || (ts_recv.type != MP_UINT && ts_recv.type != MP_INT)
        || rd_obj(&r, &body) || body.type != MP_ARR)
        return sp_decode(self, frame);
    PyObject *tag_s = PyUnicode_DecodeUTF8(tag.s, tag.n, NULL);
    if (tag_s == NULL) {
        PyErr_Clear();
        return sp_decode(self, frame);
    }
    PyObject *entry = PyDict_GetItemWithError(D.registry, tag_s);
    PyObject *kinds = entry ? PyDict_GetItemWithError(S_kinds, tag_s) : NULL;
    Py_DECREF(tag_s);
    PyObject *cls = (entry && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 3) ? PyTuple_GET_ITEM(entry, 0) : NULL;
    PyObject *keys = (cls && kinds) ? PyDict_GetItemWithError(L.records, cls) : NULL;
    PyObject *type_part = keys ? PyDict_GetItemWithError(L.type_part, cls) : NULL;
    if (type_part == NULL || !PyBytes_CheckExact(kinds) || PyBytes_GET_SIZE(kinds) != body.n
        || !PyTuple_CheckExact(keys) || PyTuple_GET_SIZE(keys) != body.n) {
        PyErr_Clear();
        return sp_decode(self, frame);
    }
    PyObject *out = NULL, *topic = NULL, *src = NULL, *line = NULL;
    Buf b;
    buf_init(&b);
    /* the envelope head, as put_line_head writes it (topic and source are plain ASCII here) */
    if (put(&b, "{\"topic\":\"", 10) < 0 || put(&b, buf, i) < 0 || put(&b, "\"", 1) < 0
        || put_str(&b, type_part) < 0 || put(&b, "\"", 1) < 0 || put(&b, source.s, source.n) < 0
        || put(&b, "\",\"seq\":", 8) < 0 || put_mp_int(&b, &seq) < 0 || put(&b, ",\"msg_id\":", 10) < 0
        || put_mp_int(&b, &msg_id) < 0 || put(&b, ",\"ts_event\":", 12) < 0 || put_mp_int(&b, &ts_event) < 0
        || put(&b, ",\"ts_recv\":", 11) < 0 || put_mp_int(&b, &ts_recv) < 0 || put(&b, ",\"body\":{", 9) < 0)
        goto fail;
    const char *kc = PyBytes_AS_STRING(kinds);
    for (Py_ssize_t k = 0; k < body.n; k++) {
        if ((k && put(&b, ",", 1) < 0) || put_str(&b, PyTuple_GET_ITEM(keys, k)) < 0)
            goto fail;
        int rc = put_mp_field(&b, &r, kc[k]);
        if (rc < 0)
            goto fail;
        if (rc > 0)
            goto usual;
    }
    if (r.p != r.end)                  /* trailing bytes: decode() refuses the frame */
        goto usual;
    if (put(&b, "}}", 2) < 0)
        goto fail;
    topic = PyUnicode_DecodeASCII(buf, i, NULL);
    if (topic == NULL)
        goto fail;
    if (D.last_source != NULL && PyUnicode_IS_COMPACT_ASCII(D.last_source)
        && PyUnicode_GET_LENGTH(D.last_source) == source.n
        && memcmp(PyUnicode_DATA(D.last_source), source.s, (size_t)source.n) == 0) {
        src = Py_NewRef(D.last_source);
    } else {
        src = PyUnicode_DecodeASCII(source.s, source.n, NULL);
        if (src == NULL)
            goto fail;
        Py_XSETREF(D.last_source, Py_NewRef(src));
    }
    line = PyUnicode_DecodeASCII(b.p, b.len, NULL);
    PyObject *msg = line ? PyObject_CallOneArg(S_line_type, line) : NULL;
    if (msg == NULL)
        goto fail;
    PyObject *ints[4] = {mp_int(&msg_id), mp_int(&seq), mp_int(&ts_event), mp_int(&ts_recv)};
    if (!ints[0] || !ints[1] || !ints[2] || !ints[3]) {
        for (int k = 0; k < 4; k++)
            Py_XDECREF(ints[k]);
        Py_DECREF(msg);
        goto fail;
    }
    PyObject *env = D.envelope->tp_alloc(D.envelope, 7);
    if (env == NULL) {
        for (int k = 0; k < 4; k++)
            Py_DECREF(ints[k]);
        Py_DECREF(msg);
        goto fail;
    }
    PyTuple_SET_ITEM(env, 0, topic);
    PyTuple_SET_ITEM(env, 1, ints[0]);
    PyTuple_SET_ITEM(env, 2, src);
    PyTuple_SET_ITEM(env, 3, ints[1]);
    PyTuple_SET_ITEM(env, 4, ints[2]);
    PyTuple_SET_ITEM(env, 5, ints[3]);
    PyTuple_SET_ITEM(env, 6, msg);
    topic = src = NULL;                /* stolen */
    out = env;
    goto done;
usual:
    out = sp_decode(self, frame);      /* the usual decode: its envelope, or its DecodeError */
    goto done;
fail:
    out = NULL;
done:
    Py_XDECREF(topic);
    Py_XDECREF(src);
    Py_XDECREF(line);
    buf_free(&b);
    return out;
}

static PyObject *
sp_configure_store(PyObject *self, PyObject *args)
{
    PyObject *kinds, *line_type;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &kinds, &line_type))
        return NULL;
    Py_XDECREF(S_kinds);
    Py_XDECREF(S_line_type);
    Py_INCREF(kinds);
    Py_INCREF(line_type);
    S_kinds = kinds;
    S_line_type = line_type;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", sp_decode, METH_O, "Decode one wire frame (see proto.codec.decode)."},
    {"configure", sp_configure, METH_VARARGS,
     "configure(unpackb, kwargs, registry, Envelope, fallback, major, max_frame, sep)"},
    {"pack_frame", (PyCFunction)(void (*)(void))sp_pack_frame, METH_FASTCALL,
     "pack_frame(prefix, obj) -> prefix + msgpack(obj); raises Unsupported for what it does not pack"},
    {"dump_line", sp_dump_line, METH_O,
     "dump_line(env) -> proto.jsonl.dumps(env); raises Unsupported for what it does not format"},
    {"configure_lines", sp_configure_lines, METH_VARARGS,
     "configure_lines(records, type_parts, encode_basestring_ascii, Decimal, Envelope)"},
    {"record_out", (PyCFunction)(void (*)(void))record_out, METH_FASTCALL,
     "record_out(fallback, kinds, record) -> the record's body (fallback(record) for anything unusual)"},
    {"record_in", (PyCFunction)(void (*)(void))record_in, METH_FASTCALL,
     "record_in(cls, kinds, cache, body) -> the record (raises for anything the Python decoder must judge)"},
    {"levels_in", (PyCFunction)(void (*)(void))levels_in, METH_FASTCALL,
     "levels_in(cache, fallback, v, name) -> [[Decimal, Decimal], ...] (fallback(v, name) when unusual)"},
    {"store_envelope", sp_store_envelope, METH_O,
     "store_envelope(frame) -> Envelope(..., line_type(store line)), else decode(frame)"},
    {"configure_store", sp_configure_store, METH_VARARGS, "configure_store(kinds, line_type)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "proto._speedups",
    "The envelope half of proto.codec.decode in C (optional; pure Python fallback).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Unsupported = PyErr_NewException("proto._speedups.Unsupported", PyExc_TypeError, NULL);
    if (Unsupported == NULL || PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
