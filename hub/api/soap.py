"""SOAP 1.1 and 1.2 envelopes around HL7 v3 messages, as the platforms' service buses send them.

Two shapes are read from an envelope's Body:

- **inline**: the v3 message is the Body's element itself (``<soap:Body><PRPA_IN201311UV02 …>``);
- **string parameter**: the Body holds an operation element (``HIPMessageServer`` in the platform
  WSDLs, any name or namespace here) whose parameter carries the v3 message as escaped text or
  CDATA (``<message>&lt;PRPA_IN201311UV02 …</message>``), beside others such as ``action``.

Of an operation's parameters the message is the one named ``message`` (the WSDL's, and the
platforms'), else the one parameter whose text reads as an HL7 v3 element (``<m:input>`` of another
bus), else the only one whose text is markup at all (answered AR if it is no v3 message).

The answer goes back the way the request came: in an envelope of the same SOAP version, inline,
or as the text of ``<{operation}Response><{operation}Result>`` in the operation's namespace. A
request that is SOAP (``requested``) but whose envelope cannot be read (not well-formed, a
DOCTYPE, too large), holds no v3 message, or has a header block marked ``mustUnderstand`` is a SOAP
Fault (``Client``/``Sender``, or ``MustUnderstand``). ``wsdl`` describes the string-parameter
operation (``HIPMessageServer``: ``action``, ``message`` → ``HIPMessageServerResult``) with SOAP
1.1 and 1.2 bindings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import escape

from lxml import etree

from fhir_mapping.base import MappingError
from fhir_mapping.xmlsafe import parse_xml
from hub.core.errors import HubError

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
V3 = "urn:hl7-org:v3"
MEDIA = {SOAP11: "text/xml", SOAP12: "application/soap+xml"}
OPERATION = "HIPMessageServer"
_INTERACTION = re.compile(r"^[A-Z]{4}_IN\d{6}[A-Z]{2}\d{0,2}$")


@dataclass
class Envelope:
    ns: str  # the SOAP version's namespace
    operation: etree.QName | None  # the string-parameter operation; None: inline
    message: bytes  # the v3 message
    action: str = ""  # the operation's ``action`` parameter: the service the sender calls

    @property
    def media_type(self) -> str:
        return MEDIA[self.ns]


class NotAMessage(HubError):
    """A SOAP request without a v3 message the hub can read in it (answered with a SOAP Fault):
    ``fault`` is ``Sender`` (the envelope, or what it holds), or ``MustUnderstand`` (header blocks
    the hub does not understand: ``not_understood``, their qualified names)."""

    error_code = "invalid"

    def __init__(self, ns: str, text: str, fault: str = "Sender", rule: str = "v3.soap-fault",
                 not_understood: tuple[etree.QName, ...] = ()):
        super().__init__(text)
        self.ns, self.text, self.fault, self.rule = ns, text, fault, rule
        self.not_understood = not_understood


_COMMENT = re.compile(rb"<!--.*?-->", re.S)
_FIRST_TAG = re.compile(rb"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")


def requested(content_type: str, soap_action: str | None, head: bytes = b"") -> str | None:
    """The SOAP version (its namespace) a request was sent in, as far as can be told without
    reading its envelope; None: not SOAP. SOAP 1.2 is ``application/soap+xml``; SOAP 1.1 is
    ``text/xml`` with a ``SOAPAction`` header; else a body (``head``: its first bytes) whose first
    element is an ``Envelope`` is SOAP of the version whose namespace it names."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/soap+xml":
        return SOAP12
    if media == "text/xml" and soap_action is not None:
        return SOAP11
    head = _COMMENT.sub(b"", head[:4096])
    first = _FIRST_TAG.search(head)
    if first is None or first.group(2) != b"Envelope":
        return None
    return SOAP12 if SOAP12.encode() in head and SOAP11.encode() not in head else SOAP11


_DECLARED = re.compile(r"""^(<\?xml[^>]*?encoding\s*=\s*["'])[A-Za-z0-9._-]+(["'])""")


def unwrap(raw: bytes, soap: str | None = None) -> Envelope | None:
    """The v3 message of a SOAP request, or None when ``raw`` is no envelope (a bare v3 message,
    or something unreadable: the v3 endpoint answers those itself). ``soap``: the version the
    request was sent in (``requested``), if it was: an envelope that cannot be read is then a
    NotAMessage, not something for the v3 endpoint to answer."""
    try:
        root = parse_xml(raw)
    except MappingError as e:
        if soap is None:
            return None
        raise NotAMessage(soap, f"the SOAP envelope cannot be read: {e.reason}",
                          rule=e.rule or "v3.soap-fault") from None
    qname = etree.QName(root)
    if qname.localname != "Envelope" or qname.namespace not in MEDIA:
        return None
    ns = qname.namespace
    _understood(root, ns)
    body = root.find(f"{{{ns}}}Body")
    first = next((el for el in body if isinstance(el.tag, str)), None) if body is not None else None
    if first is None:
        raise NotAMessage(ns, "the SOAP Body is empty")
    name = etree.QName(first)
    if name.namespace == V3 and _INTERACTION.match(name.localname):
        return Envelope(ns, None, etree.tostring(first, encoding="UTF-8", xml_declaration=True))
    action = next(((el.text or "").strip() for el in first.iter()
                   if el is not first and isinstance(el.tag, str)
                   and etree.QName(el).localname == "action"), "")
    param = _parameter(ns, first)
    # the text is characters now: a declaration naming the bytes it once was (gb2312, as Chinese
    # .NET and Java clients send it) would make the parser misread the UTF-8
    text = _DECLARED.sub(r"\1UTF-8\2", param, count=1)
    return Envelope(ns, name, text.encode("utf-8"), action[:200])


def _parameter(ns: str, operation: etree._Element) -> str:
    """The text of the operation's parameter that carries the v3 message (see the module)."""
    markup = [(el, (el.text or "").strip()) for el in operation.iter()
              if el is not operation and isinstance(el.tag, str)
              and (el.text or "").strip().startswith("<")]
    named = [text for el, text in markup if etree.QName(el).localname.lower() == "message"]
    if len(named) == 1:
        return named[0]
    v3 = [text for _, text in markup if _is_v3(text)]
    if len(v3) == 1:
        return v3[0]
    if len(markup) == 1:
        return markup[0][1]
    op = etree.QName(operation).localname
    if not markup:
        raise NotAMessage(ns, f"no HL7 v3 message in the SOAP Body's {op!r}: send it as the "
                              "Body's element or as the escaped text of its 'message' parameter")
    names = ", ".join(repr(etree.QName(el).localname) for el, _ in markup)
    raise NotAMessage(ns, f"the SOAP Body's {op!r} has several parameters holding markup "
                          f"({names}) and not one HL7 v3 message among them: send the message "
                          "as the 'message' parameter")


def _is_v3(text: str) -> bool:
    try:
        root = parse_xml(_DECLARED.sub(r"\1UTF-8\2", text, count=1).encode("utf-8"))
    except MappingError:
        return False
    return etree.QName(root).namespace == V3


# the roles a header block may be targeted at that this hub plays: none named (the ultimate
# receiver), the next node (every node), and SOAP 1.2's ultimate receiver named
_OUR_ROLES = {"", "http://schemas.xmlsoap.org/soap/actor/next",
              "http://www.w3.org/2003/05/soap-envelope/role/next",
              "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver"}


def _understood(root: etree._Element, ns: str) -> None:
    """Refuse an envelope with header blocks targeted at the hub and marked ``mustUnderstand``:
    the hub understands no header block (SOAP 1.1 section 4.2.3, SOAP 1.2 part 1 section 5.2.3),
    and processing the Body without them would ignore what the sender requires (a security or
    addressing header)."""
    header = root.find(f"{{{ns}}}Header")
    if header is None:
        return
    role = "role" if ns == SOAP12 else "actor"
    blocks = tuple(etree.QName(el) for el in header if isinstance(el.tag, str)
                   and (el.get(f"{{{ns}}}mustUnderstand") or "").strip() in ("1", "true")
                   and (el.get(f"{{{ns}}}{role}") or "").strip() in _OUR_ROLES)
    if blocks:
        names = ", ".join(f"{{{b.namespace}}}{b.localname}" if b.namespace else b.localname
                          for b in blocks)
        raise NotAMessage(ns, f"SOAP header block(s) marked mustUnderstand that the hub does not "
                              f"understand: {names}", fault="MustUnderstand",
                          rule="v3.soap-must-understand", not_understood=blocks)


def wrap(env: Envelope, answer: bytes) -> bytes:
    """``answer`` (a v3 message) in an envelope shaped like the request's."""
    if env.operation is None:
        text = answer.decode("utf-8")
        inner = re.sub(r"^<\?xml[^>]*\?>\s*", "", text)
    else:
        op, ns = env.operation.localname, env.operation.namespace
        xmlns = f' xmlns="{escape(ns, {chr(34): "&quot;"})}"' if ns else ""
        inner = (f"<{op}Response{xmlns}><{op}Result>{escape(answer.decode('utf-8'))}"
                 f"</{op}Result></{op}Response>")
    return (f'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{env.ns}">'
            f"<soap:Body>{inner}</soap:Body></soap:Envelope>").encode("utf-8")


def fault(ns: str, text: str, code: str = "Sender",
          not_understood: tuple[etree.QName, ...] = ()) -> tuple[int, bytes]:
    """(HTTP status, body) of a SOAP Fault: ``Sender`` (SOAP 1.1 ``Client``: the sender's mistake),
    ``MustUnderstand`` or ``Receiver`` (SOAP 1.1 ``Server``: the hub cannot take it now). The
    status as the HTTP bindings say: SOAP 1.2 ``Sender`` 400, every other fault 500."""
    header = ""
    if ns == SOAP12:
        body = (f"<soap:Fault><soap:Code><soap:Value>soap:{code}</soap:Value></soap:Code>"
                f'<soap:Reason><soap:Text xml:lang="en">{escape(text)}</soap:Text></soap:Reason>'
                f"</soap:Fault>")
        status = 400 if code == "Sender" else 500
        # SOAP 1.2 part 1 section 5.4.8: a NotUnderstood block names each header not understood
        header = "".join(
            f'<soap:NotUnderstood xmlns:h="{escape(b.namespace, {chr(34): "&quot;"})}" '
            f'qname="h:{b.localname}"/>' if b.namespace else
            f'<soap:NotUnderstood qname="{b.localname}"/>' for b in not_understood)
        header = f"<soap:Header>{header}</soap:Header>" if header else ""
    else:
        code = {"Sender": "Client", "Receiver": "Server"}.get(code, code)
        body = (f"<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{escape(text)}"
                f"</faultstring></soap:Fault>")
        status = 500  # SOAP 1.1 over HTTP: a fault is a 500
    return status, (f'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{ns}">'
                    f"{header}<soap:Body>{body}</soap:Body></soap:Envelope>").encode("utf-8")


def wsdl(address: str) -> bytes:
    """The service description: one operation, ``HIPMessageServer`` (``action``: the
    interaction id, or the service's name where several share one; ``message``: the v3 message
    as text) answering ``HIPMessageServerResult``
    (the v3 answer as text), over SOAP 1.1 and 1.2, at ``address``."""
    a = escape(address, {'"': "&quot;"})
    op = OPERATION
    return f'''<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/"
    xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="{V3}" targetNamespace="{V3}"
    name="HubV3Service">
  <wsdl:types>
    <xs:schema targetNamespace="{V3}" elementFormDefault="qualified">
      <xs:element name="{op}">
        <xs:complexType><xs:sequence>
          <xs:element name="action" type="xs:string" minOccurs="0"/>
          <xs:element name="message" type="xs:string"/>
        </xs:sequence></xs:complexType>
      </xs:element>
      <xs:element name="{op}Response">
        <xs:complexType><xs:sequence>
          <xs:element name="{op}Result" type="xs:string"/>
        </xs:sequence></xs:complexType>
      </xs:element>
    </xs:schema>
  </wsdl:types>
  <wsdl:message name="{op}In"><wsdl:part name="parameters" element="tns:{op}"/></wsdl:message>
  <wsdl:message name="{op}Out"><wsdl:part name="parameters" element="tns:{op}Response"/></wsdl:message>
  <wsdl:portType name="HubV3PortType">
    <wsdl:operation name="{op}">
      <wsdl:input message="tns:{op}In"/><wsdl:output message="tns:{op}Out"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="HubV3Soap11" type="tns:HubV3PortType">
    <soap:binding transport="http://schemas.xmlsoap.org/soap/http" style="document"/>
    <wsdl:operation name="{op}">
      <soap:operation soapAction="urn:hl7-org:v3/{op}" style="document"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:binding name="HubV3Soap12" type="tns:HubV3PortType">
    <soap12:binding transport="http://schemas.xmlsoap.org/soap/http" style="document"/>
    <wsdl:operation name="{op}">
      <soap12:operation soapAction="urn:hl7-org:v3/{op}" style="document"/>
      <wsdl:input><soap12:body use="literal"/></wsdl:input>
      <wsdl:output><soap12:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="HubV3Service">
    <wsdl:port name="HubV3Soap11Port" binding="tns:HubV3Soap11"><soap:address location="{a}"/></wsdl:port>
    <wsdl:port name="HubV3Soap12Port" binding="tns:HubV3Soap12"><soap12:address location="{a}"/></wsdl:port>
  </wsdl:service>
</wsdl:definitions>
'''.encode("utf-8")
