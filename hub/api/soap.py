"""SOAP 1.1 and 1.2 envelopes around HL7 v3 messages, as the platforms' service buses send them.

Two shapes are read from an envelope's Body:

- **inline**: the v3 message is the Body's element itself (``<soap:Body><PRPA_IN201311UV02 …>``);
- **string parameter**: the Body holds an operation element (``HIPMessageServer`` in the platform
  WSDLs, any name or namespace here) whose parameter carries the v3 message as escaped text or
  CDATA (``<message>&lt;PRPA_IN201311UV02 …</message>``), beside others such as ``action``.

The answer goes back the way the request came: in an envelope of the same SOAP version, inline,
or as the text of ``<{operation}Response><{operation}Result>`` in the operation's namespace. An
envelope that holds no v3 message is a SOAP Fault (``Client``/``Sender``). ``wsdl`` describes the
string-parameter operation (``HIPMessageServer``: ``action``, ``message`` → ``HIPMessageServerResult``)
with SOAP 1.1 and 1.2 bindings.
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
    """An envelope without a v3 message in it (answered with a SOAP Fault)."""

    error_code = "invalid"

    def __init__(self, ns: str, text: str):
        super().__init__(text)
        self.ns, self.text = ns, text


_DECLARED = re.compile(r"""^(<\?xml[^>]*?encoding\s*=\s*["'])[A-Za-z0-9._-]+(["'])""")


def unwrap(raw: bytes) -> Envelope | None:
    """The v3 message of a SOAP request, or None when ``raw`` is no envelope (a bare v3 message,
    or something unreadable: the v3 endpoint answers those itself)."""
    try:
        root = parse_xml(raw)
    except MappingError:
        return None
    qname = etree.QName(root)
    if qname.localname != "Envelope" or qname.namespace not in MEDIA:
        return None
    ns = qname.namespace
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
    for el in first.iter():
        text = (el.text or "").strip()
        if el is not first and text.startswith("<"):
            # the text is characters now: a declaration naming the bytes it once was (gb2312, as
            # Chinese .NET and Java clients send it) would make the parser misread the UTF-8
            text = _DECLARED.sub(r"\1UTF-8\2", text, count=1)
            return Envelope(ns, name, text.encode("utf-8"), action[:200])
    raise NotAMessage(ns, f"no HL7 v3 message in the SOAP Body's {name.localname!r}: send it "
                          "as the Body's element or as the escaped text of a parameter")


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


def fault(ns: str, text: str) -> tuple[int, bytes]:
    """(HTTP status, body) of a SOAP Fault: the sender's mistake."""
    if ns == SOAP12:
        body = (f'<soap:Fault><soap:Code><soap:Value>soap:Sender</soap:Value></soap:Code>'
                f'<soap:Reason><soap:Text xml:lang="en">{escape(text)}</soap:Text></soap:Reason>'
                f"</soap:Fault>")
        status = 400
    else:
        body = (f"<soap:Fault><faultcode>soap:Client</faultcode><faultstring>{escape(text)}"
                f"</faultstring></soap:Fault>")
        status = 500  # SOAP 1.1 over HTTP: a fault is a 500
    return status, (f'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{ns}">'
                    f"<soap:Body>{body}</soap:Body></soap:Envelope>").encode("utf-8")


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
