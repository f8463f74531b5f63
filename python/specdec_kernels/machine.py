"""What CPU this is, as results, the planner's cost cache and `specdec info` name it: the model name with the
family and model numbers, which tell generations apart where a VM shortens the name (an "AMD EPYC" of family 25,
model 1 is a Zen 3; Zen 5 is family 26)."""
import platform


def cpuinfo_fields() -> dict:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_description() -> str:
    """"NAME, family F, model M"; the name alone where /proc/cpuinfo has no numbers (then the platform's name)."""
    fields = cpuinfo_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in fields or "model" not in fields:
        return name
    return f"{name}, family {fields['cpu family']}, model {fields['model']}"
