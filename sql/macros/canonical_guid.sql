{#- One canonical form per GUID: trimmed of braces and spaces, upper case, in braces. A GUID that is empty once
    trimmed ('', '{}') stays '': KSQL keys on '' as on any other value (PARTITION BY, the table's KEY), so a
    process create with ProcessGuid '' is a table row and a connection with '' joins it. NULL stays NULL. -#}
{% macro canonical_guid(text) -%}
CASE WHEN trim({{ text }}, '{} ') = '' THEN '' ELSE '{' || upper(trim({{ text }}, '{} ')) || '}' END
{%- endmacro %}
