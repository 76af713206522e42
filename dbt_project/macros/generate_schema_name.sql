{#- Use the layer name itself as the schema (staging, intermediate, marts), so SQL users
    write marts.dim_items rather than main_marts.dim_items. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ custom_schema_name | trim if custom_schema_name else target.schema }}
{%- endmacro %}
