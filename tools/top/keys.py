"""The keys of ``tickmesh top``, as a small state machine with no terminal: ``feed(key)`` takes one
key (a character, or "enter", "esc", "backspace") and returns an action or None.

Actions: ``("quit",)``, ``("filter", PRODUCT)`` (empty: every product), ``("engage", REASON)``,
``("release", REASON)``. Only the last two change anything in the mesh, and only after a reason and
a ``y`` confirmation; every other key is either a prompt's text or ignored.
"""

KEYS_HELP = "k kill switch · r release · / filter · q quit"


class Keys:
    def __init__(self):
        self.mode = None        # None | "filter" | "engage" | "release" | "confirm-engage" | "confirm-release"
        self.text = ""
        self.reason = ""
        self.note = ""          # a one-line hint after a cancelled or refused prompt

    @property
    def prompt(self) -> str:
        """The prompt line to show, or "" when none is open."""
        if self.mode == "filter":
            return f"filter by product (empty: all, Esc: cancel): {self.text}_"
        if self.mode in ("engage", "release"):
            what = "ENGAGE the kill switch" if self.mode == "engage" else "request a RELEASE of the kill switch"
            return f"{what}: reason (Enter to continue, Esc to cancel): {self.text}_"
        if self.mode == "confirm-engage":
            return f"ENGAGE the kill switch with reason {self.reason!r}? [y/N]"
        if self.mode == "confirm-release":
            return f"RELEASE the kill switch with reason {self.reason!r}? [y/N]"
        return ""

    def feed(self, key: str):
        if self.mode is None:
            self.note = ""
            if key in ("q", "Q"):
                return ("quit",)
            if key == "k":
                self.mode, self.text = "engage", ""
            elif key == "r":
                self.mode, self.text = "release", ""
            elif key == "/":
                self.mode, self.text = "filter", ""
            return None
        if key == "esc":
            self.mode, self.text = None, ""
            self.note = "cancelled"
            return None
        if self.mode.startswith("confirm-"):
            action = self.mode[len("confirm-"):]
            self.mode, reason, self.reason = None, self.reason, ""
            if key in ("y", "Y"):
                return (action, reason)
            self.note = f"{action} cancelled (not confirmed)"
            return None
        if key == "enter":
            text = self.text.strip()
            if self.mode == "filter":
                self.mode, self.text = None, ""
                return ("filter", text.upper())
            if not text:
                self.note = "a reason is required"
                return None
            self.mode, self.reason, self.text = f"confirm-{self.mode}", text, ""
            return None
        if key == "backspace":
            self.text = self.text[:-1]
        elif len(key) == 1 and key.isprintable() and len(self.text) < 200:
            self.text += key
        return None


def split_keys(data: str) -> list:
    """Terminal input -> keys: Enter, Backspace and a lone Esc named; escape sequences (arrows,
    function keys) dropped."""
    out = []
    i = 0
    while i < len(data):
        ch = data[i]
        if ch == "\x1b":
            if i + 1 < len(data) and data[i + 1] in "[O":
                j = i + 2
                while j < len(data) and not ("@" <= data[j] <= "~"):
                    j += 1
                i = j + 1
                continue
            out.append("esc")
        elif ch in "\r\n":
            out.append("enter")
        elif ch in "\x7f\x08":
            out.append("backspace")
        elif ch.isprintable():
            out.append(ch)
        i += 1
    return out
