{#- Trimmed text, with empty strings read as missing. -#}
{% macro clean_text(raw) -%}
    nullif(trim({{ raw }}), '')
{%- endmacro %}
