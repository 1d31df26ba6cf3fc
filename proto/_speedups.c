/* proto._speedups: the envelope half of proto.codec.decode, and a msgpack frame packer, in C.
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

static PyObject *
sp_decode(PyObject *self, PyObject *frame)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "proto._speedups.configure() was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(frame))
        return fallback(frame);
    const char *buf = PyBytes_AS_STRING(frame);
    Py_ssize_t n = PyBytes_GET_SIZE(frame);
    if (n > D.max_frame)
        return fallback(frame);
    const char *sep = memchr(buf, D.sep, (size_t)n);
    if (sep == NULL || sep == buf)
        return fallback(frame);
    Py_ssize_t i = sep - buf;

    PyObject *view = PyMemoryView_FromMemory((char *)(buf + i + 1), n - i - 1, PyBUF_READ);
    if (view == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, view);
    Py_DECREF(view);
    if (args == NULL)
        return NULL;
    PyObject *obj = PyObject_Call(D.unpackb, args, D.kwargs);
    Py_DECREF(args);
    if (obj == NULL) {
        /* garbage, an ext hook refusal, ...: let the Python path produce its error */
        PyErr_Clear();
        return fallback(frame);
    }
    PyObject *out = NULL;
    if (!PyList_CheckExact(obj) || PyList_GET_SIZE(obj) != 9) {
        out = fallback(frame);
        goto done;
    }
    PyObject **f = ((PyListObject *)obj)->ob_item;
    PyObject *major = f[0], *tag = f[2], *msg_id = f[3], *source = f[4], *seq = f[5];
    PyObject *ts_event = f[6], *ts_recv = f[7], *body = f[8];
    if (!PyLong_CheckExact(major) || !PyUnicode_CheckExact(tag) || !PyLong_CheckExact(msg_id)
        || !PyUnicode_CheckExact(source) || !PyLong_CheckExact(seq) || !PyLong_CheckExact(ts_event)
        || !PyLong_CheckExact(ts_recv) || !PyList_CheckExact(body)) {
        out = fallback(frame);
        goto done;
    }
    int overflow = 0;
    long mj = PyLong_AsLongAndOverflow(major, &overflow);
    if (overflow || mj != D.major) {
        PyErr_Clear();
        out = fallback(frame);
        goto done;
    }
    PyObject *entry = PyDict_GetItemWithError(D.registry, tag);   /* borrowed (cls, fast, nf) */
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3) {
        PyErr_Clear();
        out = fallback(frame);
        goto done;
    }
    if (PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2)) != PyList_GET_SIZE(body)) {
        PyErr_Clear();
        out = fallback(frame);
        goto done;
    }
    PyObject *topic;
    if (D.last_topic != NULL && i == D.last_topic_len && memcmp(D.last_topic_bytes, buf, (size_t)i) == 0) {
        topic = D.last_topic;                 /* the same topic as the last frame: one str object */
        Py_INCREF(topic);
    } else {
        topic = PyUnicode_DecodeASCII(buf, i, NULL);
        if (topic == NULL) {
            PyErr_Clear();
            out = fallback(frame);
            goto done;
        }
        if (i <= (Py_ssize_t)sizeof(D.last_topic_bytes)) {
            Py_XDECREF(D.last_topic);
            Py_INCREF(topic);
            D.last_topic = topic;
            D.last_topic_len = i;
            memcpy(D.last_topic_bytes, buf, (size_t)i);
        }
    }
    /* the same source as the last frame: reuse that str (its hash is already computed) */
    if (D.last_source != NULL && PyUnicode_Compare(source, D.last_source) == 0) {
        source = D.last_source;
    } else {
        if (PyErr_Occurred())
            PyErr_Clear();
        Py_XDECREF(D.last_source);
        Py_INCREF(source);
        D.last_source = source;
    }
    PyObject *msg = PyObject_CallOneArg(PyTuple_GET_ITEM(entry, 1), body);
    if (msg == NULL) {               /* let the Python path name the bad field */
        PyErr_Clear();
        Py_DECREF(topic);
        out = fallback(frame);
        goto done;
    }
    PyObject *env = D.envelope->tp_alloc(D.envelope, 7);
    if (env == NULL) {
        Py_DECREF(topic);
        Py_DECREF(msg);
        goto done;
    }
    PyTuple_SET_ITEM(env, 0, topic);                 /* steals */
    Py_INCREF(msg_id);
    PyTuple_SET_ITEM(env, 1, msg_id);
    Py_INCREF(source);
    PyTuple_SET_ITEM(env, 2, source);
    Py_INCREF(seq);
    PyTuple_SET_ITEM(env, 3, seq);
    Py_INCREF(ts_event);
    PyTuple_SET_ITEM(env, 4, ts_event);
    Py_INCREF(ts_recv);
    PyTuple_SET_ITEM(env, 5, ts_recv);
    PyTuple_SET_ITEM(env, 6, msg);                   /* steals */
    out = env;
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
    if (configured) {
        Py_CLEAR(D.unpackb);
        Py_CLEAR(D.kwargs);
        Py_CLEAR(D.registry);
        Py_CLEAR(D.envelope);
        Py_CLEAR(D.fallback);
    }
    Py_INCREF(unpackb);
    Py_INCREF(kwargs);
    Py_INCREF(registry);
    Py_INCREF(envelope);
    Py_INCREF(fb);
    D.unpackb = unpackb;
    D.kwargs = kwargs;
    D.registry = registry;
    D.envelope = (PyTypeObject *)envelope;
    D.fallback = fb;
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
    b.p = b.small;
    b.len = 0;
    b.cap = (Py_ssize_t)sizeof(b.small);
    PyObject *out = NULL;
    if (put(&b, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0])) == 0
        && pack_obj(&b, args[1], 0) == 0)
        out = PyBytes_FromStringAndSize(b.p, b.len);
    if (b.p != b.small)
        PyMem_Free(b.p);
    return out;
}

static PyMethodDef methods[] = {
    {"decode", sp_decode, METH_O, "Decode one wire frame (see proto.codec.decode)."},
    {"configure", sp_configure, METH_VARARGS,
     "configure(unpackb, kwargs, registry, Envelope, fallback, major, max_frame, sep)"},
    {"pack_frame", (PyCFunction)(void (*)(void))sp_pack_frame, METH_FASTCALL,
     "pack_frame(prefix, obj) -> prefix + msgpack(obj); raises Unsupported for what it does not pack"},
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
