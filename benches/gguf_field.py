# The value of a GGUF metadata field as Python values (a list for arrays), for the
# synthetic-model scripts beside this file, which copy a tokenizer from an existing file.
import gguf


def field(reader, name):
    f = reader.fields[name]
    vals = [f.parts[i] for i in f.data]
    if f.types[-1] == gguf.GGUFValueType.STRING:
        vals = [bytes(v).decode() for v in vals]
    else:
        vals = [v.tolist()[0] for v in vals]
    return vals if f.types[0] == gguf.GGUFValueType.ARRAY else vals[0]
