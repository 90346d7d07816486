<?xml version="1.0" encoding="UTF-8"?>
<!-- A CDA document (WS/T 500, WS/T 483, C-CDA) as an HTML fragment for the console: the header
     (title, patient, date, author, custodian), then each section with its narrative block and a
     table of its coded entries (WS/T 500 documents carry their data in entries, their <text/> is
     often empty). Links and multimedia references are shown as text, never followed. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:h="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    exclude-result-prefixes="h xsi">
  <xsl:output method="html" encoding="utf-8" indent="no"/>
  <!-- the header's labels, in the reader's language -->
  <xsl:param name="l_patient" select="'Patient'"/>
  <xsl:param name="l_date" select="'Date'"/>
  <xsl:param name="l_author" select="'Author'"/>
  <xsl:param name="l_custodian" select="'Custodian'"/>

  <xsl:template match="/h:ClinicalDocument">
    <article class="cda">
      <h2 id="cda-title"><xsl:value-of select="h:title"/></h2>
      <table class="cda-header"><tbody>
        <tr><th><xsl:value-of select="$l_patient"/></th><td><xsl:apply-templates select="h:recordTarget/h:patientRole/h:patient/h:name[1]"/></td></tr>
        <tr><th><xsl:value-of select="$l_date"/></th><td><xsl:apply-templates select="h:effectiveTime" mode="time"/></td></tr>
        <tr><th><xsl:value-of select="$l_author"/></th><td><xsl:for-each select="h:author/h:assignedAuthor">
          <xsl:apply-templates select="h:assignedPerson/h:name[1]"/>
          <xsl:if test="h:representedOrganization/h:name"> · <xsl:value-of select="h:representedOrganization/h:name"/></xsl:if>
        </xsl:for-each></td></tr>
        <tr><th><xsl:value-of select="$l_custodian"/></th><td><xsl:value-of select="h:custodian//h:representedCustodianOrganization/h:name"/></td></tr>
      </tbody></table>
      <xsl:apply-templates select="h:component/h:structuredBody/h:component/h:section"/>
      <xsl:for-each select="h:component/h:nonXMLBody">
        <p class="muted">nonXMLBody: <xsl:value-of select="h:text/@mediaType"/></p>
      </xsl:for-each>
    </article>
  </xsl:template>

  <xsl:template match="h:name">
    <xsl:choose>
      <!-- Chinese names read family then given with no space; Latin-script ones with one -->
      <xsl:when test="(h:family or h:given) and translate(concat(h:family, h:given), 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', '') != concat(h:family, h:given)"><xsl:value-of select="h:given[1]"/><xsl:text> </xsl:text><xsl:value-of select="h:family"/></xsl:when>
      <xsl:when test="h:family or h:given"><xsl:value-of select="h:family"/><xsl:value-of select="h:given"/></xsl:when>
      <xsl:otherwise><xsl:value-of select="normalize-space(.)"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <xsl:template match="*" mode="time">
    <xsl:variable name="v" select="(@value | h:low/@value)[1]"/>
    <xsl:if test="$v and $v != '00000000'">
      <xsl:value-of select="substring($v, 1, 4)"/>-<xsl:value-of select="substring($v, 5, 2)"/>-<xsl:value-of select="substring($v, 7, 2)"/>
      <xsl:if test="string-length($v) &gt;= 12"><xsl:text> </xsl:text><xsl:value-of select="substring($v, 9, 2)"/>:<xsl:value-of select="substring($v, 11, 2)"/></xsl:if>
    </xsl:if>
  </xsl:template>

  <xsl:template match="h:section">
    <section class="cda-section">
      <h3><xsl:choose>
        <xsl:when test="normalize-space(h:title)"><xsl:value-of select="h:title"/></xsl:when>
        <xsl:otherwise><xsl:value-of select="h:code/@displayName"/></xsl:otherwise>
      </xsl:choose></h3>
      <xsl:if test="normalize-space(h:text)"><div class="narrative"><xsl:apply-templates select="h:text/node()"/></div></xsl:if>
      <xsl:if test="h:entry">
        <table class="cda-entries"><tbody>
          <xsl:apply-templates select="h:entry/*" mode="row"/>
        </tbody></table>
      </xsl:if>
      <xsl:apply-templates select="h:component/h:section"/>
    </section>
  </xsl:template>

  <!-- the narrative block -->
  <xsl:template match="h:paragraph"><p><xsl:apply-templates/></p></xsl:template>
  <xsl:template match="h:list[@listType='ordered']"><ol><xsl:apply-templates select="h:item"/></ol></xsl:template>
  <xsl:template match="h:list"><ul><xsl:apply-templates select="h:item"/></ul></xsl:template>
  <xsl:template match="h:item"><li><xsl:apply-templates/></li></xsl:template>
  <xsl:template match="h:table"><table><xsl:apply-templates select="h:caption | h:thead | h:tbody | h:tr"/></table></xsl:template>
  <xsl:template match="h:caption"><caption><xsl:apply-templates/></caption></xsl:template>
  <xsl:template match="h:thead"><thead><xsl:apply-templates select="h:tr"/></thead></xsl:template>
  <xsl:template match="h:tbody"><tbody><xsl:apply-templates select="h:tr"/></tbody></xsl:template>
  <xsl:template match="h:tr"><tr><xsl:apply-templates select="h:th | h:td"/></tr></xsl:template>
  <xsl:template match="h:th"><th><xsl:apply-templates/></th></xsl:template>
  <xsl:template match="h:td"><td><xsl:apply-templates/></td></xsl:template>
  <xsl:template match="h:br"><br/></xsl:template>
  <xsl:template match="h:content | h:linkHtml | h:sub | h:sup | h:footnote | h:footnoteRef"><span><xsl:apply-templates/></span></xsl:template>
  <xsl:template match="h:renderMultiMedia"/>

  <!-- entries: one row each, what they hold nested below, indented -->
  <xsl:template match="*" mode="row">
    <xsl:param name="depth" select="0"/>
    <xsl:variable name="label">
      <xsl:choose>
        <xsl:when test="h:code/@displayName"><xsl:value-of select="h:code/@displayName"/></xsl:when>
        <xsl:when test="h:consumable//h:manufacturedMaterial/h:name | h:consumable//h:manufacturedLabeledDrug/h:name"><xsl:value-of select="(h:consumable//h:manufacturedMaterial/h:name | h:consumable//h:manufacturedLabeledDrug/h:name)[1]"/></xsl:when>
        <xsl:otherwise><xsl:value-of select="h:code/@code"/></xsl:otherwise>
      </xsl:choose>
    </xsl:variable>
    <xsl:if test="normalize-space($label) or h:value or h:text">
      <tr>
        <td style="padding-left: {$depth * 1.2 + 0.5}rem"><xsl:value-of select="$label"/></td>
        <td><xsl:for-each select="h:value | h:doseQuantity"><xsl:apply-templates select="." mode="value"/><xsl:if test="position() != last()">; </xsl:if></xsl:for-each>
          <xsl:if test="not(h:value) and normalize-space(h:text)"><xsl:value-of select="normalize-space(h:text)"/></xsl:if></td>
        <td class="muted"><xsl:apply-templates select="h:effectiveTime" mode="time"/></td>
      </tr>
    </xsl:if>
    <xsl:apply-templates select="h:entryRelationship/* | h:component/* | h:consumable/*[h:code or h:value]" mode="row">
      <xsl:with-param name="depth" select="$depth + 1"/>
    </xsl:apply-templates>
  </xsl:template>

  <xsl:template match="*" mode="value">
    <xsl:choose>
      <xsl:when test="@displayName"><xsl:value-of select="@displayName"/><xsl:if test="@code"> (<xsl:value-of select="@code"/>)</xsl:if></xsl:when>
      <xsl:when test="@value"><xsl:value-of select="@value"/><xsl:if test="@unit and @unit != '1'"><xsl:text> </xsl:text><xsl:value-of select="@unit"/></xsl:if></xsl:when>
      <xsl:when test="h:low or h:high"><xsl:value-of select="h:low/@value"/>–<xsl:value-of select="h:high/@value"/><xsl:text> </xsl:text><xsl:value-of select="(h:low/@unit | h:high/@unit)[1]"/></xsl:when>
      <xsl:when test="@code"><xsl:value-of select="@code"/></xsl:when>
      <xsl:otherwise><xsl:value-of select="normalize-space(.)"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>
</xsl:stylesheet>
