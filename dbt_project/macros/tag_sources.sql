{#- The tag sources of marts.item_tag_documents: the betag_tag_sources var of dbt_project.yml,
    the one list of them (dagster_betag/evaluation/tag_sources.py reads the same). -#}

{% macro tag_sources() %}
    {{ return(var('betag_tag_sources')) }}
{% endmacro %}

{% macro tag_source_names() %}
    {{ return(tag_sources() | map(attribute='name') | list) }}
{% endmacro %}

{% macro betag_variant_names() %}
    {{ return(tag_sources() | selectattr('betag_variant', 'defined') | map(attribute='betag_variant') | list) }}
{% endmacro %}
